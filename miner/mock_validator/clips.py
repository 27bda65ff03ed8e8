"""Making a round's clips as the validator's video scheduler does: a 30 fps yuv420p H.264 reference at
the task's output size, and the input made from it by a bicubic downscale by 2 or 4, re-encoded."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from miner.mock_validator.content import ProceduralScene, source_frames
from miner.mock_validator.scoring import Reference
from miner.mock_validator.settings import Geometry
from miner.mock_validator.videoio import Encoding, encode_rgb, probe, rescale

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".y4m"}


def source_files(directory: Path) -> list[Path]:
    """Video files directly in ``directory``, sorted; an error when there are none."""
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {directory}")
    return files


def make_clips(ref_dir: Path, input_dir: Path, geometry: Geometry, count: int, seconds: float,
               settings: Mapping[str, Any], *, seed: int, sources: Sequence[Path] = (), prefix: str = "clip"
               ) -> list[Reference]:
    """``count`` pairs: ``ref_dir/<prefix>NN_ref.mp4`` (kept private) and ``input_dir/<prefix>NN_in.mp4`` (served)."""
    enc, content, fps = settings["encode"], settings["content"], int(settings["round"]["fps"])
    ref_enc = Encoding("libx264", enc["reference_preset"], int(enc["reference_crf"]), int(enc["gop"]))
    in_enc = Encoding("libx264", enc["input_preset"], int(enc["input_crf"]))
    w, h = geometry.out_width, geometry.out_height
    clips = []
    for i in range(count):
        start = time.perf_counter()
        ref_path, in_path = ref_dir / f"{prefix}{i:02d}_ref.mp4", input_dir / f"{prefix}{i:02d}_in.mp4"
        if sources:
            frames = source_frames(sources[i % len(sources)], w, h, fps, seconds, np.random.default_rng(seed + i))
        else:
            frames = ProceduralScene(w, h, fps, seconds, seed=seed + i, pan_widths_per_s=float(content["pan_widths_per_s"]),
                                     sprites=int(content["sprites"]), text=str(content["text"]))
        encode_rgb(frames, ref_path, w, h, fps, ref_enc)
        rescale(ref_path, in_path, geometry.in_width, geometry.in_height, in_enc)
        clips.append(Reference(ref_path, in_path, probe(ref_path), geometry))
        log.info("clip made name=%s size=%dx%d input=%dx%d frames=%d seconds=%.2f", ref_path.name, w, h,
                 geometry.in_width, geometry.in_height, clips[-1].info.frames, time.perf_counter() - start)
    return clips


def bicubic_baseline(ref: Reference, settings: Mapping[str, Any]) -> Path:
    """The input upscaled bicubically to the output size and encoded like a passing miner output
    (written beside the reference)."""
    enc = settings["encode"]
    out = ref.path.with_name(ref.input_path.stem + "_bicubic.mp4")
    rescale(ref.input_path, out, ref.geometry.out_width, ref.geometry.out_height,
            Encoding(enc["baseline_codec"], enc["baseline_preset"], int(enc["baseline_crf"])))
    return out
