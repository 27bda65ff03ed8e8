"""Making a round's clips as the validator's video scheduler does: a 30 fps yuv420p H.264 reference at
the task's output size, and the input made from it by a bicubic downscale by 2 or 4, re-encoded."""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from miner.mock_validator.content import ProceduralScene, source_frames
from miner.mock_validator.scoring import Reference
from miner.mock_validator.settings import Geometry
from miner.mock_validator.videoio import Encoding, encode_rgb, probe, rescale

log = logging.getLogger(__name__)

T = TypeVar("T")

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".y4m"}


def source_files(directory: Path) -> list[Path]:
    """Video files directly in ``directory``, sorted; an error when there are none."""
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {directory}")
    return files


class ClipError(RuntimeError):
    """Work on one or more clips of a round failed; the message names each failed clip and its error,
    the first failure is chained as the cause."""


def map_clips(job: Callable[[int], T], names: Sequence[str], workers: int, what: str) -> list[T]:
    """``job(i)`` for each clip ``i`` of ``names``, ``workers`` at once in threads (PyAV's codecs,
    swscale, numpy and torch release the GIL); the results in clip order.

    After a failure the clips not started yet are cancelled and the running ones finish; then a
    ClipError names every clip that failed."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip") as pool:
        futures = [pool.submit(job, i) for i in range(len(names))]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # also on an interrupt: clips not started yet never start
            for future in futures:
                future.cancel()
    failed = [(name, f.exception()) for name, f in zip(names, futures) if not f.cancelled() and f.exception()]
    if failed:
        skipped = sum(f.cancelled() for f in futures)
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failed)
        raise ClipError(f"{what} failed for {len(failed)} of {len(names)} clips ({skipped} not started): "
                        f"{detail}") from failed[0][1]
    return [f.result() for f in futures]


def _clip_paths(ref_dir: Path, input_dir: Path, prefix: str, i: int) -> tuple[Path, Path]:
    """Reference and input paths of clip ``i``: ``ref_dir/<prefix>NN_ref.mp4``, ``input_dir/<prefix>NN_in.mp4``."""
    return ref_dir / f"{prefix}{i:02d}_ref.mp4", input_dir / f"{prefix}{i:02d}_in.mp4"


def make_clips(ref_dir: Path, input_dir: Path, geometry: Geometry, count: int, seconds: float,
               settings: Mapping[str, Any], *, seed: int, sources: Sequence[Path] = (), prefix: str = "clip",
               workers: int = 1) -> list[Reference]:
    """``count`` pairs: ``ref_dir/<prefix>NN_ref.mp4`` (kept private) and ``input_dir/<prefix>NN_in.mp4`` (served),
    ``workers`` made at once; clip ``i`` is the same whatever ``workers`` (its content seeded by ``seed + i``)."""
    names = [_clip_paths(ref_dir, input_dir, prefix, i)[0].name for i in range(count)]
    job = partial(_make_clip, ref_dir=ref_dir, input_dir=input_dir, geometry=geometry, seconds=seconds,
                  settings=settings, seed=seed, sources=sources, prefix=prefix)
    return map_clips(job, names, workers, "making clips")


def _make_clip(i: int, *, ref_dir: Path, input_dir: Path, geometry: Geometry, seconds: float,
               settings: Mapping[str, Any], seed: int, sources: Sequence[Path], prefix: str) -> Reference:
    """Clip ``i`` of :func:`make_clips`: its frames, the reference encode, the input rescale, the probe."""
    start = time.perf_counter()
    enc, content, fps = settings["encode"], settings["content"], int(settings["round"]["fps"])
    ref_enc = Encoding("libx264", enc["reference_preset"], int(enc["reference_crf"]), int(enc["gop"]))
    in_enc = Encoding("libx264", enc["input_preset"], int(enc["input_crf"]))
    w, h = geometry.out_width, geometry.out_height
    ref_path, in_path = _clip_paths(ref_dir, input_dir, prefix, i)
    if sources:
        frames = source_frames(sources[i % len(sources)], w, h, fps, seconds, np.random.default_rng(seed + i))
    else:
        frames = ProceduralScene(w, h, fps, seconds, seed=seed + i, pan_widths_per_s=float(content["pan_widths_per_s"]),
                                 sprites=int(content["sprites"]), text=str(content["text"]))
    encode_rgb(frames, ref_path, w, h, fps, ref_enc)
    rescale(ref_path, in_path, geometry.in_width, geometry.in_height, in_enc)
    clip = Reference(ref_path, in_path, probe(ref_path), geometry)
    log.info("clip made name=%s size=%dx%d input=%dx%d frames=%d seconds=%.2f", ref_path.name, w, h,
             geometry.in_width, geometry.in_height, clip.info.frames, time.perf_counter() - start)
    return clip


def bicubic_baseline(ref: Reference, settings: Mapping[str, Any]) -> Path:
    """The input upscaled bicubically to the output size and encoded like a passing miner output
    (written beside the reference)."""
    enc = settings["encode"]
    out = ref.path.with_name(ref.input_path.stem + "_bicubic.mp4")
    rescale(ref.input_path, out, ref.geometry.out_width, ref.geometry.out_height,
            Encoding(enc["baseline_codec"], enc["baseline_preset"], int(enc["baseline_crf"])))
    return out
