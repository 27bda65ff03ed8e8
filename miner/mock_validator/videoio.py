"""The validator side of video I/O: encode clips as the validator does, read planes back, probe streams."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np


@dataclass(frozen=True)
class StreamInfo:
    """What the validator's ffprobe calls read from a clip (``frames`` is counted by decoding)."""

    codec: str
    profile: str
    pix_fmt: str
    width: int
    height: int
    fps: Fraction
    frames: int
    container: str
    sar: str
    size_bytes: int


@dataclass(frozen=True)
class Encoding:
    """Encoder settings: codec (``libx264``, ``libx265``), preset, CRF, GOP (0 = encoder default)."""

    codec: str
    preset: str
    crf: int
    gop: int = 0

    def options(self) -> dict[str, str]:
        opts = {"preset": self.preset, "crf": str(self.crf)}
        if self.codec == "libx265":
            opts["x265-params"] = "log-level=error"
        if self.gop:
            opts.update({"g": str(self.gop), "keyint_min": str(self.gop), "sc_threshold": "0"})
        return opts


def encode_rgb(frames: Iterable[np.ndarray], path: Path, width: int, height: int, fps: int, enc: Encoding) -> int:
    """Encode RGB uint8 frames to an MP4 (yuv420p, constant ``fps``); returns the frame count."""
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream(enc.codec, rate=Fraction(fps), options=enc.options())
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for count, rgb in enumerate(frames, start=1):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = count - 1, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return count


def rescale(src: Path, dst: Path, width: int, height: int, enc: Encoding) -> int:
    """Re-encode ``src`` at ``width`` x ``height`` with swscale bicubic on yuv420p frames (what
    ``ffmpeg -vf scale=W:H`` does with its default flags); keeps the frame rate; returns frames."""
    count = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        rate = Fraction(in_stream.average_rate)
        stream = out.add_stream(enc.codec, rate=rate, options=enc.options())
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for count, frame in enumerate(inp.decode(in_stream), start=1):
            scaled = frame.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC")
            scaled.pts, scaled.time_base = count - 1, 1 / rate
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
    return count


def read_planes(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decoded frames as 8-bit yuv420p planes ``(Y (H, W), U (H/2, W/2), V (H/2, W/2))``."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.format.name != "yuv420p":
                frame = frame.reformat(format="yuv420p")
            h, w = frame.height, frame.width
            planes = frame.to_ndarray()
            y = planes[:h]
            chroma = planes[h:].reshape(2, h // 2, w // 2)
            yield y, chroma[0], chroma[1]


def probe(path: Path) -> StreamInfo:
    """Codec, profile, pixel format, geometry, frame rate and decoded frame count of the first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        frames = sum(1 for _ in container.decode(stream))
        sar = ctx.sample_aspect_ratio
        return StreamInfo(
            codec=ctx.name, profile=ctx.profile or "", pix_fmt=ctx.pix_fmt or "", width=ctx.width,
            height=ctx.height, fps=Fraction(stream.average_rate or 0), frames=frames,
            container=container.format.name, sar=f"{sar.numerator}:{sar.denominator}" if sar else "1:1",
            size_bytes=Path(path).stat().st_size)
