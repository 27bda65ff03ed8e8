"""Opening an input video and reading its properties (:func:`probe`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from upscaler.errors import InputVideoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the upscaler needs to know about an input video."""

    width: int
    height: int
    fps: Fraction
    frames: int  # exact when the container records it, else estimated from duration x fps
    duration_s: float
    has_audio: bool
    codec: str
    pix_fmt: str
    frames_exact: bool = True


def open_input(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return the container and its first video stream.

    Raises :class:`InputVideoError` for a missing, empty, unreadable or video-less file.
    """
    path = Path(path)
    if not path.exists():
        raise InputVideoError(f"input video not found: {path}")
    if not path.is_file():
        raise InputVideoError(f"input video is not a regular file: {path}")
    if path.stat().st_size == 0:
        raise InputVideoError(f"input video is empty (0 bytes): {path}")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InputVideoError(f"cannot read {path.name}: not a video or corrupt ({exc.__class__.__name__}: {exc})") from exc
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        container.close()
        raise InputVideoError(f"{path.name} has no video stream (zero frames or not a video; it holds {kinds})")
    return container, container.streams.video[0]


def stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's frame rate as an exact fraction (FFmpeg's guess, then the average rate)."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate.numerator, rate.denominator)
    raise InputVideoError("the video stream has no usable frame rate")


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _check_frame_size(name: str, width: int, height: int, max_frame_pixels: int | None) -> None:
    if max_frame_pixels is not None and width * height > max_frame_pixels:
        raise InputVideoError(f"{name}'s frames are {width}x{height}: more than the {max_frame_pixels} pixels "
                              "allowed per frame")


def probe(path: str | Path, max_frame_pixels: int | None = None) -> VideoInfo:
    """Read ``path``'s video properties and decode its first frame to prove it is usable.

    Raises :class:`InputVideoError` with a clear message when the file is missing, empty, corrupt,
    not a video, or has no decodable frame, or when ``max_frame_pixels`` is given and the frame size
    its header declares (checked before decoding, which costs memory and time in proportion) or its
    first decoded frame is larger.
    """
    container, stream = open_input(path)
    name = Path(path).name
    with container:
        _check_frame_size(name, stream.codec_context.width, stream.codec_context.height, max_frame_pixels)
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise InputVideoError(f"cannot decode {name}: {exc.__class__.__name__}: {exc}") from exc
        if first is None:
            raise InputVideoError(f"{name} has no decodable video frames")
        _check_frame_size(name, first.width, first.height, max_frame_pixels)
        fps = stream_fps(stream)
        duration = _duration_s(container, stream)
        exact = stream.frames > 0
        frames = stream.frames if exact else max(1, round(duration * fps))
        info = VideoInfo(
            width=first.width,
            height=first.height,
            fps=fps,
            frames=frames,
            duration_s=duration if duration > 0 else float(frames / fps),
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
            pix_fmt=first.format.name,
            frames_exact=exact,
        )
    log.debug("probe %s: %s", name, info)
    return info
