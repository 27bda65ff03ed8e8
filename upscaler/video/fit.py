"""Shrinking an encoded video under a byte cap by re-encoding at a higher CRF."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from upscaler.errors import OutputTooLargeError
from upscaler.video.config import video_config
from upscaler.video.probe import probe
from upscaler.video.reader import FrameReader
from upscaler.video.writer import FrameWriter

log = logging.getLogger(__name__)

_CODECS = {"h264": "h264", "hevc": "hevc"}


def _next_crf(crf: int, size: int, target: int, step: int) -> int:
    """CRF expected to bring ``size`` down to ``target`` (about +6 CRF per halving), at least +step."""
    jump = math.ceil(6 * math.log2(size / target)) if size > target else 0
    return crf + max(step, jump)


def fit_to_size(path: str | Path, max_bytes: int, *, codec: str | None = None) -> Path:
    """Make the video at ``path`` at most ``max_bytes`` long, re-encoding it in place if needed.

    Each attempt decodes ``path`` and re-encodes it (audio carried over) at a CRF chosen from the
    previous attempt's size; the first attempt that fits replaces ``path`` atomically. Raises
    :class:`OutputTooLargeError` when even the highest allowed CRF does not fit; ``path`` is then
    left as it was. ``codec`` defaults to the file's own codec (H.264 or HEVC, else H.264).
    """
    path = Path(path)
    size = path.stat().st_size
    if size <= max_bytes:
        return path
    cfg = video_config()
    info = probe(path)
    codec = codec or _CODECS.get(info.codec, "h264")
    target = int(max_bytes * cfg.fit.headroom)
    crf, attempt_size = cfg.writer.crf, size
    for attempt in range(1, cfg.fit.max_attempts + 1):
        if crf >= cfg.fit.max_crf:
            break
        crf = min(cfg.fit.max_crf, _next_crf(crf, attempt_size, target, cfg.fit.crf_step))
        candidate = path.with_name(f".{path.stem}.fit-crf{crf}.mp4")
        try:
            with FrameWriter(
                candidate, info.width, info.height, info.fps, codec=codec, crf=crf,
                audio_from=path if info.has_audio else None,
            ) as writer:
                for frame in FrameReader(path):
                    writer.write(frame)
            attempt_size = candidate.stat().st_size
            log.info("fit attempt=%d crf=%d bytes=%d cap=%d", attempt, crf, attempt_size, max_bytes)
            if attempt_size <= max_bytes:
                os.replace(candidate, path)
                return path
        finally:
            candidate.unlink(missing_ok=True)
    raise OutputTooLargeError(
        f"{path.name} is {size} bytes and could not be brought under {max_bytes} bytes "
        f"(last attempt: crf {crf}, {attempt_size} bytes)"
    )
