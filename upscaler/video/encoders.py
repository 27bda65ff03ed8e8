"""Choosing the video encoder: NVENC when it really works on this machine, else x264/x265."""

from __future__ import annotations

import logging
from fractions import Fraction
from functools import lru_cache

import av

log = logging.getLogger(__name__)

SOFTWARE = {"h264": "libx264", "hevc": "libx265"}
NVENC = {"h264": "h264_nvenc", "hevc": "hevc_nvenc"}


def _has_codec(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False


@lru_cache(maxsize=None)
def nvenc_opens(name: str, width: int, height: int, pix_fmt: str) -> bool:
    """Whether FFmpeg has encoder ``name`` and it opens for this size and pixel format.

    FFmpeg builds list NVENC even without an NVIDIA driver or GPU; only opening an encoder
    session proves it works (size limits and 4:4:4 support vary per GPU). Cached per arguments.
    """
    if not _has_codec(name):
        return False
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
        ctx.time_base = Fraction(1, 30)
        ctx.framerate = Fraction(30)
        ctx.open()
        ctx.close()
    except (av.FFmpegError, ValueError, OSError) as exc:
        log.info("nvenc unavailable encoder=%s size=%dx%d pix_fmt=%s reason=%r", name, width, height, pix_fmt, str(exc))
        return False
    return True


def choose_encoder(codec: str, width: int, height: int, pix_fmt: str, *, prefer_nvenc: bool) -> str:
    """The FFmpeg encoder name for ``codec`` (``"h264"`` or ``"hevc"``)."""
    if codec not in SOFTWARE:
        raise ValueError(f"unsupported output codec {codec!r}; expected one of {sorted(SOFTWARE)}")
    if prefer_nvenc and nvenc_opens(NVENC[codec], width, height, pix_fmt):
        return NVENC[codec]
    if prefer_nvenc:
        log.info("encoder fallback codec=%s encoder=%s (NVENC not usable here)", codec, SOFTWARE[codec])
    return SOFTWARE[codec]


def encoder_options(encoder: str, *, crf: int, preset: str, nvenc_preset: str) -> dict[str, str]:
    """FFmpeg private options giving constant-quality encoding at ``crf`` for ``encoder``."""
    if encoder.endswith("_nvenc"):
        return {"preset": nvenc_preset, "rc": "vbr", "cq": str(crf)}  # with bit_rate 0: pure constant quality
    options = {"crf": str(crf), "preset": preset}
    if encoder == "libx265":
        options["x265-params"] = "log-level=error"
    return options
