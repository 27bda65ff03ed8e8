"""Carrying a source file's audio into an output MP4: packet copy, or re-encode when MP4 can't hold it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import av

from upscaler.video.config import AudioConfig

log = logging.getLogger(__name__)


class AudioPass:
    """Feeds the first audio stream of ``source`` into ``output``, interleaved with the video.

    Codecs listed in ``copy_codecs`` are remuxed packet by packet; anything else is decoded and
    re-encoded (AAC by default). Timestamps are shifted by the source video's start time so the
    output (whose video starts at 0) stays in sync. Call :meth:`pump` as video is written and
    :meth:`finish` at the end.
    """

    def __init__(self, source: av.container.InputContainer, output: av.container.OutputContainer, cfg: AudioConfig) -> None:
        self._source = source
        self._input = source.streams.audio[0]
        self.copy = self._input.codec_context.name in cfg.copy_codecs
        if self.copy:
            self._output = output.add_stream_from_template(self._input)
        else:
            self._output = output.add_stream(cfg.reencode_codec, rate=self._input.codec_context.sample_rate)
            self._output.layout = self._input.codec_context.layout
            self._output.bit_rate = cfg.reencode_bitrate
        self._container = output
        self._offset_s = _video_start_s(source)
        self._items = self._source_items()
        self._pending: tuple[float, object] | None = None
        self.muxed = 0
        log.info(
            "audio %s codec=%s rate=%s offset_s=%.3f",
            "copy" if self.copy else f"re-encode to {cfg.reencode_codec}",
            self._input.codec_context.name, self._input.codec_context.sample_rate, self._offset_s,
        )

    @classmethod
    def open(cls, path: str | Path, output: av.container.OutputContainer, cfg: AudioConfig) -> "AudioPass | None":
        """An AudioPass for ``path``'s audio, or None (logged) when it has no usable audio stream."""
        try:
            source = av.open(str(path), "r")
        except av.FFmpegError as exc:
            log.warning("audio source unreadable path=%s error=%r; output has no audio", path, str(exc))
            return None
        if not source.streams.audio:
            source.close()
            return None
        try:
            return cls(source, output, cfg)
        except (av.FFmpegError, ValueError) as exc:
            source.close()
            log.warning("audio stream unusable path=%s error=%r; output has no audio", path, str(exc))
            return None

    def _source_items(self) -> Iterator[tuple[float, object]]:
        """(time in seconds, packet or decoded frame) in source order, timestamps already shifted."""
        tb = self._input.time_base
        shift = round(self._offset_s / tb) if tb else 0
        for packet in self._source.demux(self._input):
            if packet.dts is None:
                continue
            if self.copy:
                packet.pts = packet.pts - shift if packet.pts is not None else None
                packet.dts -= shift
                yield float((packet.pts if packet.pts is not None else packet.dts) * tb), packet
            else:
                for frame in packet.decode():
                    frame.pts = None  # the encoder's resampler re-times the samples
                    yield float(frame.time or 0.0) - self._offset_s, frame

    def _emit(self, item: object) -> None:
        if self.copy:
            item.stream = self._output
            self._container.mux(item)
        else:
            self._container.mux(self._output.encode(item))
        self.muxed += 1

    def pump(self, until_s: float) -> None:
        """Mux the audio up to ``until_s`` seconds of output time."""
        while True:
            if self._pending is None:
                self._pending = next(self._items, None)
                if self._pending is None:
                    return
            at, item = self._pending
            if at > until_s:
                return
            self._pending = None
            self._emit(item)

    def finish(self) -> None:
        """Mux the rest of the audio (flushing the encoder when re-encoding) and close the source."""
        self.pump(float("inf"))
        if not self.copy:
            self._container.mux(self._output.encode(None))
        self.close()

    def close(self) -> None:
        self._source.close()


def _video_start_s(source: av.container.InputContainer) -> float:
    """Start time of the source's video stream (or of the container) in seconds."""
    if source.streams.video:
        video = source.streams.video[0]
        if video.start_time is not None and video.time_base is not None:
            return float(video.start_time * video.time_base)
    return source.start_time / av.time_base if source.start_time is not None else 0.0
