"""Encoding RGB frames to an MP4 in a background thread, atomically (temp file + rename)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

from upscaler.errors import EncodeError
from upscaler.video.audio import AudioPass
from upscaler.video.channel import Channel, ChannelAborted
from upscaler.video.config import video_config
from upscaler.video.encoders import choose_encoder, encoder_options
from upscaler.video.priority import lower_thread_priority

log = logging.getLogger(__name__)

FrameBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


def _as_frames(frames: FrameBatch) -> list[np.ndarray]:
    """Split ``(H, W, 3)``, ``(T, H, W, 3)`` or a sequence of frames into ``(H, W, 3)`` uint8 arrays."""
    if isinstance(frames, (list, tuple)):
        return [f for item in frames for f in _as_frames(item)]
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim == 3:
        return [frames]
    if frames.ndim == 4:
        return list(frames)
    raise ValueError(f"frames must be (H, W, 3) or (T, H, W, 3), got shape {tuple(frames.shape)}")


class FrameWriter:
    """Context manager that encodes uint8 RGB frames into the MP4 ``path``.

    Frames (numpy arrays or CPU tensors, one ``(H, W, 3)`` or a batch ``(T, H, W, 3)``) go through a
    bounded queue to an encoder thread (RGB -> YUV conversion and encoding overlap the caller's
    work). Output: H.264 or HEVC (NVENC when it works here, else libx264/libx265), yuv420p (yuv444p
    for odd sizes, which 4:2:0 cannot represent), exactly one video frame per frame written at the
    exact rate ``fps``, ``+faststart``, and the audio of ``audio_from`` when it has any.

    The file is written beside ``path`` under a temporary name and renamed on success; on an
    exception in the ``with`` block, :meth:`abort`, or an encoder error, the temporary file is
    deleted and ``path`` is left untouched.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction | int | float,
        *,
        codec: str | None = None,
        crf: int | None = None,
        preset: str | None = None,
        audio_from: str | Path | None = None,
        threads: int | None = None,
        queue_frames: int | None = None,
    ) -> None:
        cfg = video_config()
        wcfg = cfg.writer
        if width <= 0 or height <= 0:
            raise ValueError(f"output size must be positive, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height = width, height
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise ValueError(f"frame rate must be positive, got {fps}")
        codec = codec or wcfg.codec
        crf = wcfg.crf if crf is None else crf
        self.pix_fmt = wcfg.pix_fmt
        if width % 2 or height % 2:
            # 4:2:0 cannot represent odd sizes, and libx265 corrupts memory on small odd 4:4:4 frames,
            # so odd sizes are always H.264 4:4:4.
            self.pix_fmt, codec = wcfg.odd_size_pix_fmt, "h264"
            log.warning("odd output size %dx%d: encoding h264 %s (4:2:0 needs even sizes)", width, height, self.pix_fmt)
        self.encoder = choose_encoder(codec, width, height, self.pix_fmt, prefer_nvenc=wcfg.prefer_nvenc)
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.part.mp4")
        self.frames_written = 0
        self.encode_seconds = 0.0
        """Seconds the encoder thread spent converting, encoding and muxing (busy time)."""
        self._error: BaseException | None = None
        self._done = False
        self._began = time.perf_counter()

        options = {"movflags": "+faststart"} if wcfg.faststart else {}
        self._container = av.open(str(self._tmp), "w", format="mp4", options=options)
        try:
            self._video = self._container.add_stream(self.encoder, rate=self.fps)
            ctx = self._video.codec_context
            ctx.width, ctx.height, ctx.pix_fmt = width, height, self.pix_fmt
            ctx.time_base = 1 / self.fps
            ctx.bit_rate = 0
            ctx.thread_count = wcfg.threads if threads is None else threads
            ctx.options = encoder_options(self.encoder, crf=crf, preset=preset or wcfg.preset, nvenc_preset=wcfg.nvenc_preset)
            if codec == "hevc":
                ctx.codec_tag = "hvc1"  # the tag Apple players require for HEVC in MP4
            self._audio = AudioPass.open(audio_from, self._container, cfg.audio) if audio_from is not None else None
        except BaseException:
            self._container.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._nice = wcfg.nice
        self._channel: Channel[np.ndarray] = Channel(wcfg.queue_frames if queue_frames is None else queue_frames)
        self._thread = threading.Thread(target=self._encode_loop, name=f"encode-{self.path.name}", daemon=True)
        self._thread.start()
        log.info(
            "writer open path=%s size=%dx%d fps=%s encoder=%s pix_fmt=%s crf=%d audio=%s",
            self.path.name, width, height, self.fps, self.encoder, self.pix_fmt, crf,
            "none" if self._audio is None else ("copy" if self._audio.copy else "re-encode"),
        )

    # -- encoder thread ---------------------------------------------------------------------
    def _encode_loop(self) -> None:
        try:
            lower_thread_priority(self._nice)  # before the codec opens: its worker threads inherit it
            for index, array in enumerate(self._channel):
                began = time.perf_counter()
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = index
                self._container.mux(self._video.encode(frame))
                if self._audio is not None:
                    self._audio.pump((index + 1) / self.fps)
                self.encode_seconds += time.perf_counter() - began
            began = time.perf_counter()
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.finish()
            self._container.close()
            self.encode_seconds += time.perf_counter() - began
        except ChannelAborted:
            self._close_quietly()
        except BaseException as exc:  # reported to the caller by write()/close()
            self._error = exc
            self._channel.abort()
            self._close_quietly()

    def _close_quietly(self) -> None:
        if self._audio is not None:
            self._audio.close()
        try:
            self._container.close()
        except (av.FFmpegError, OSError) as exc:
            log.debug("closing an aborted output failed: %r", exc)

    # -- caller side ------------------------------------------------------------------------
    def _raise_encoder_error(self) -> None:
        self._thread.join()
        self._tmp.unlink(missing_ok=True)
        self._done = True
        error = self._error
        raise EncodeError(f"encoding {self.path.name} failed: {error.__class__.__name__}: {error}") from error

    def write(self, frames: FrameBatch) -> None:
        """Queue one frame or a batch of frames (uint8 RGB, ``width`` x ``height``) for encoding."""
        if self._done:
            raise RuntimeError("FrameWriter is closed")
        for array in _as_frames(frames):
            if array.shape != (self.height, self.width, 3):
                self.abort()
                raise ValueError(f"frame shape {tuple(array.shape)} != ({self.height}, {self.width}, 3)")
            if not self._channel.put(np.ascontiguousarray(array)):
                self._raise_encoder_error()
            self.frames_written += 1

    def close(self) -> Path:
        """Finish encoding, then move the file to ``path``. Returns ``path``."""
        if self._done:
            return self.path
        self._channel.close()
        self._thread.join()
        if self._error is not None:
            self._raise_encoder_error()
        self._done = True
        if self.frames_written == 0:
            self._tmp.unlink(missing_ok=True)
            raise EncodeError(f"no frames were written to {self.path.name}")
        os.replace(self._tmp, self.path)
        seconds = time.perf_counter() - self._began
        log.info(
            "writer done path=%s frames=%d bytes=%d seconds=%.2f encoder=%s",
            self.path.name, self.frames_written, self.path.stat().st_size, seconds, self.encoder,
        )
        return self.path

    def abort(self) -> None:
        """Stop encoding and delete the temporary file; ``path`` is not created."""
        if self._done:
            return
        self._done = True
        self._channel.abort()
        self._thread.join()
        self._tmp.unlink(missing_ok=True)
        log.info("writer aborted path=%s frames=%d", self.path.name, self.frames_written)

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
