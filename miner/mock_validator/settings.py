"""Settings of the mock validator: ``configs/mock_validator.toml``, an optional file, then overrides."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Mapping

from miner.config_numbers import CRF, NON_NEGATIVE, POSITIVE, WHOLE_0, WHOLE_1, Number, check_numbers
from upscaler.configfiles import load_config

DEFAULTS = "mock_validator"

# Every numeric key of configs/mock_validator.toml (tests/miner/test_mock_validator_settings.py walks the file)
NUMBERS: dict[str, Number] = {
    "round.clips": WHOLE_1,
    "round.clip_seconds": POSITIVE,
    "round.fps": WHOLE_1,
    "round.rounds": WHOLE_1,
    "round.concurrency": WHOLE_1,
    "round.workers": Number(whole=True, low=0, note="0: one per CPU core"),
    "round.organic_clips": WHOLE_1,
    "round.maximum_optimized_size_mb": WHOLE_1,
    "round.seed": WHOLE_0,
    "timeouts.*": POSITIVE,
    "tasks.*.width": WHOLE_1,
    "tasks.*.height": WHOLE_1,
    "tasks.*.scale": WHOLE_1,
    "small.clip_seconds": POSITIVE,
    "small.clips": WHOLE_1,
    "small.*.width": WHOLE_1,
    "small.*.height": WHOLE_1,
    "encode.reference_crf": CRF,
    "encode.input_crf": CRF,
    "encode.baseline_crf": CRF,
    "encode.gop": WHOLE_1,
    "checks.frame_tolerance": WHOLE_0,
    "checks.fps_tolerance": NON_NEGATIVE,
    "checks.size_multipliers.*": POSITIVE,
    "checks.vmaf_threshold": Number(whole=False, low=0, high=100),
    "checks.chroma_ratio_min": NON_NEGATIVE,
    "checks.chroma_low_saturation": NON_NEGATIVE,
    "checks.chroma_max_frames": WHOLE_1,
    "checks.gray_brightness_min": NON_NEGATIVE,
    "checks.gray_ref_saturation_min": NON_NEGATIVE,
    "checks.gray_out_saturation_max": NON_NEGATIVE,
    "checks.gray_max_ratio": Number(whole=False, low=0, high=1),
    "metrics.sample_frames": Number(whole=True, low=0, note="0: every frame"),
    "content.pan_widths_per_s": NON_NEGATIVE,
    "content.sprites": WHOLE_0,
}


@dataclass(frozen=True)
class Geometry:
    """Sizes of one clip: the high-resolution reference (= expected output) and the low-resolution input."""

    task: str
    out_width: int
    out_height: int
    scale: int

    @property
    def in_width(self) -> int:
        return self.out_width // self.scale

    @property
    def in_height(self) -> int:
        return self.out_height // self.scale


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str = "") -> None:
    for key, value in update.items():
        if key not in base:
            raise ValueError(f"unknown mock validator setting {where}{key}")
        if isinstance(base[key], dict) and isinstance(value, Mapping):
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value


def load_settings(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Embedded defaults, then the tables of ``path`` (any subset of keys), then ``overrides``; ``ValueError``
    naming the key for an unknown key or a number of the wrong type or out of its range."""
    settings = copy.deepcopy(load_config(DEFAULTS))
    if path:
        _merge(settings, load_config(path))
    if overrides:
        _merge(settings, overrides)
    check_numbers(settings, NUMBERS)
    return settings


def task_geometry(settings: Mapping[str, Any], task: str, *, small: bool = False) -> Geometry:
    """Output size and scale of ``task``; with ``small`` the ``[small]`` preset's output size."""
    tasks = settings["tasks"]
    if task not in tasks:
        raise ValueError(f"unknown task type {task!r}; choose one of {', '.join(tasks)}")
    size = settings["small"][task] if small else tasks[task]
    scale = int(tasks[task]["scale"])
    width, height = int(size["width"]), int(size["height"])
    if width % (2 * scale) or height % (2 * scale):
        raise ValueError(f"{task}: {width}x{height} must be divisible by {2 * scale} (yuv420p input)")
    return Geometry(task, width, height, scale)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def round_workers(workers: int, clips: int, validators: int = 1) -> int:
    """Clips made / scored at once by each of ``validators`` for rounds of ``clips``: ``workers``
    (``round.workers``), or with 0 one per CPU core shared among the validators; at most ``clips``, at least 1."""
    if workers < 0:
        raise ValueError(f"round.workers must be 0 (auto) or a positive count, got {workers}")
    return max(1, min(clips, workers or available_cores() // max(validators, 1)))
