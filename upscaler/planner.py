"""Choosing a pipeline for a task from measured throughput, GPU memory and the deadline."""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from upscaler.calibration import ThroughputCalibration
from upscaler.configfiles import load_config
from upscaler.settings import UpscalerSettings
from upscaler.tile_plan import TiledRow, layout_slowdown, load_tiled_rows, plan_layout

log = logging.getLogger(__name__)

GIB = 1024**3
VIDAIO_CLIPS_PER_ROUND = 5
VIDAIO_ROUND_SECONDS = 135.0
VIDAIO_FPS = 30
FALLBACK_DEVICE = "h100"  # whose rows, scaled by unknown_gpu_factor, stand in for an unmeasured GPU
SAME_ENGINE = {"tiny-long": "tiny"}  # a variant whose speed is its twin's where it was not measured


def calibration_key(variant: str, tiled: bool) -> str:
    """The calibration's name for a variant's untiled or tiled runs (their speeds differ ~3x)."""
    return f"{variant}+tiled" if tiled else variant


@dataclass(frozen=True)
class Measurement:
    """One measured operating point."""

    device: str
    variant: str
    width: int
    height: int
    fps: float
    peak_gib: float
    precision: str = "bf16"

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class ThroughputTable:
    """Measured throughput, with pixel-count scaling between operating points, and optionally the
    machine's own calibration of it (:mod:`upscaler.calibration`)."""

    entries: tuple[Measurement, ...]
    unknown_gpu_factor: float
    safety_margin: float
    clip_overhead_s: float
    tiled_slowdown: float = 1.0
    calibration: ThroughputCalibration | None = None
    tiled_rows: tuple[TiledRow, ...] = ()
    """Measured tiled runs (``[[tiled]]``): where the device has them, a tiled plan's slowdown comes
    from its tile layout (:func:`upscaler.tile_plan.layout_slowdown`) instead of ``tiled_slowdown``."""

    @classmethod
    def load(cls, path: str = "throughput", precision: str = "bf16") -> "ThroughputTable":
        """Read ``configs/throughput.toml`` (or another file): the rows of ``precision`` (the DiT's compute
        precision), and for a device and variant without such rows, their bf16 rows."""
        raw = load_config(path)
        return cls(
            entries=_precision_rows([Measurement(**e) for e in raw.get("entry", [])], precision),
            unknown_gpu_factor=float(raw.get("unknown_gpu_factor", 0.5)),
            safety_margin=float(raw.get("safety_margin", 1.15)),
            clip_overhead_s=float(raw.get("clip_overhead_s", 1.5)),
            tiled_slowdown=float(raw.get("tiled_slowdown", 1.0)),
            tiled_rows=tuple(load_tiled_rows(path)),
        )

    def fingerprint(self) -> str:
        """A digest of the figures a calibration is relative to (rows, unknown-GPU factor, tiled slowdown):
        it changes when the table is re-measured, which invalidates a saved calibration."""
        figures = {"entries": [asdict(e) for e in self.entries], "unknown_gpu_factor": self.unknown_gpu_factor,
                   "tiled_slowdown": self.tiled_slowdown}
        if self.tiled_rows:
            figures["tiled_rows"] = [asdict(r) for r in self.tiled_rows]
        return hashlib.sha256(json.dumps(figures, sort_keys=True).encode()).hexdigest()[:16]

    def _rows(self, device: str, variant: str) -> tuple[list[Measurement], float]:
        """Rows for (device, variant); for Tiny-Long without rows, Tiny's (the same engine and decoder with
        smaller buffers); for an unmeasured device, the H100's scaled by ``unknown_gpu_factor``."""
        for dev, factor in ((device, 1.0), (FALLBACK_DEVICE, self.unknown_gpu_factor)):
            for var in dict.fromkeys((variant, SAME_ENGINE.get(variant, variant))):
                rows = [e for e in self.entries if e.device == dev and e.variant == var]
                if rows:
                    return sorted(rows, key=lambda e: e.pixels), factor
        raise LookupError(f"no throughput measurement for variant {variant!r}")

    @staticmethod
    def _interpolate(rows: list[Measurement], pixels: int, value) -> float:
        """Linear in pixels between the bracketing rows; proportional to pixels outside them."""
        if pixels <= rows[0].pixels:
            return value(rows[0]) * pixels / rows[0].pixels
        if pixels >= rows[-1].pixels:
            return value(rows[-1]) * pixels / rows[-1].pixels
        for lo, hi in zip(rows, rows[1:]):
            if lo.pixels <= pixels <= hi.pixels:
                w = (pixels - lo.pixels) / (hi.pixels - lo.pixels)
                return value(lo) * (1 - w) + value(hi) * w
        raise AssertionError("unreachable: rows are sorted")

    def frames_per_second(
        self, device: str, variant: str, width: int, height: int, *, tiled: bool = False, calibrated: bool = True,
        slowdown: float | None = None,
    ) -> float:
        """Expected frames/s at ``width x height`` (seconds per frame interpolated in pixels), divided by
        ``slowdown`` (default ``tiled_slowdown``) for a tiled run, times the calibration factor of untiled
        or tiled runs unless ``calibrated`` is false (the table's own figure)."""
        rows, factor = self._rows(device, variant)
        seconds_per_frame = self._interpolate(rows, width * height, lambda e: 1.0 / e.fps)
        if tiled:
            factor /= self.tiled_slowdown if slowdown is None else slowdown
        if calibrated and self.calibration is not None:
            factor *= self.calibration.factor(calibration_key(variant, tiled), width, height)
        return factor / seconds_per_frame

    def peak_bytes(self, device: str, variant: str, width: int, height: int) -> int:
        """Expected peak GPU memory (interpolated in pixels)."""
        rows, _ = self._rows(device, variant)
        return int(self._interpolate(rows, width * height, lambda e: e.peak_gib) * GIB)


def _precision_rows(entries: list[Measurement], precision: str) -> tuple[Measurement, ...]:
    """The entries measured in ``precision``, plus the bf16 ones of (device, variant) pairs it lacks."""
    measured = {(e.device, e.variant) for e in entries if e.precision == precision}
    return tuple(e for e in entries
                 if e.precision == precision or (e.precision == "bf16" and (e.device, e.variant) not in measured))


def estimate_seconds(width: int, height: int, frames: int, table: ThroughputTable, variant: str, device: str,
                     *, tiled: bool = False, slowdown: float | None = None) -> float:
    """Wall seconds to upscale one clip (untiled or tiled, at ``slowdown`` when given), safety margin and
    per-clip overhead included."""
    fps = table.frames_per_second(device, variant, width, height, tiled=tiled, slowdown=slowdown)
    return (frames / fps) * table.safety_margin + table.clip_overhead_s


@dataclass(frozen=True)
class Plan:
    """The pipeline chosen for a task and why."""

    variant: str
    tile_size: int
    est_seconds: float
    peak_vram_bytes: int
    reason: str


def plan(
    width: int,
    height: int,
    frames: int,
    *,
    free_vram_bytes: int | None,
    deadline_s: float | None,
    table: ThroughputTable,
    device: str,
    variant: str = "auto",
    prefer_quality: bool = False,
    long_clip_frames: int = 600,
    tile_size: int = 1024,
    settings: UpscalerSettings | None = None,
) -> Plan:
    """Pick Full, Tiny or Tiny-Long, and tiling, for one clip.

    ``auto``: Full when quality is preferred and it fits both memory and deadline; else Tiny, or
    Tiny-Long for clips longer than ``long_clip_frames``; tiled when the untiled estimate does not
    fit in ``free_vram_bytes``: in the layout :mod:`upscaler.tile_plan` chooses for that memory with
    ``settings``, the upscaler settings the worker runs with (required with free memory); its smaller tile
    side is reported as ``tile_size``; in ``tile_size`` squares when nothing is free.
    """
    _check_layout_settings(free_vram_bytes, settings)
    candidates = [variant] if variant != "auto" else (["full"] if prefer_quality else []) + [
        "tiny-long" if frames > long_clip_frames else "tiny"
    ]
    reasons = []
    for name in candidates:
        peak = table.peak_bytes(device, name, width, height)
        fits_memory = free_vram_bytes is None or peak <= free_vram_bytes
        tile, slowdown = (0, None) if fits_memory else _tiling(table, name, device, width, height, free_vram_bytes,
                                                                tile_size, settings)
        seconds = estimate_seconds(width, height, frames, table, name, device, tiled=tile > 0, slowdown=slowdown)
        on_time = deadline_s is None or seconds <= deadline_s
        if name == "full" and variant == "auto" and not (fits_memory and on_time):
            reasons.append(f"full skipped (est {seconds:.1f}s, {peak / GIB:.1f} GiB)")
            continue
        why = "; ".join(
            reasons
            + [f"{name}: est {seconds:.1f}s for {frames} frames at {width}x{height}"]
            + ([f"tiled {tile}px: needs {peak / GIB:.1f} GiB, {free_vram_bytes / GIB:.1f} free"] if tile else [])
            + ([f"deadline {deadline_s:.0f}s at risk"] if not on_time else [])
        )
        chosen = Plan(name, tile, seconds, peak, why)
        log.info("plan variant=%s tile=%d est_s=%.1f reason=%r", chosen.variant, tile, seconds, why)
        return chosen
    raise AssertionError("unreachable: the last candidate always returns")


def tiled_slowdown_for(table: ThroughputTable, device: str, variant: str, width: int, height: int, tiles: int,
                       tile_width: int, tile_height: int) -> float:
    """A tiled run's slowdown against the untiled figure (:func:`upscaler.tile_plan.layout_slowdown`): the
    planner's estimate and the calibration of finished tiled clips use the same one. An unmeasured GPU
    takes the tiled rows of the device whose untiled rows stand in for it; a measured one without tiled
    rows of the variant, the overhead of another device's."""
    measured = device if any(e.device == device for e in table.entries) else FALLBACK_DEVICE
    return layout_slowdown(tiles, tile_width, tile_height, width, height,
                           lambda dev, pixels: 1.0 / table.frames_per_second(dev, variant, pixels, 1, calibrated=False),
                           table.tiled_rows, measured, variant, table.tiled_slowdown)


def _check_layout_settings(free_vram_bytes: int | None, settings: UpscalerSettings | None) -> None:
    """Free memory is priced in tile layouts, which depend on the upscaler settings the worker runs with."""
    if free_vram_bytes and settings is None:
        raise ValueError("pricing with free GPU memory needs the worker's upscaler settings (tile layouts depend "
                         "on its tiling and variants)")


def _tiling(table: ThroughputTable, variant: str, device: str, width: int, height: int, free_vram_bytes: int,
            fallback_tile: int, settings: UpscalerSettings | None) -> tuple[int, float | None]:
    """The tile (the smaller side of the layout :mod:`upscaler.tile_plan` picks for ``free_vram_bytes`` with
    ``settings``; ``fallback_tile`` when nothing is free) and its slowdown."""
    if free_vram_bytes <= 0:
        return fallback_tile, None
    assert settings is not None, "checked by _check_layout_settings"
    layout = plan_layout(width, height, free_vram_bytes, variant, settings)
    if not layout.tiled:  # fits untiled with fewer decoder frames per pass
        return 0, None
    slowdown = tiled_slowdown_for(table, device, variant, width, height, layout.tiles, layout.tile_width,
                                  layout.tile_height)
    return min(layout.tile_width, layout.tile_height), slowdown


@dataclass(frozen=True)
class ClipWork:
    """One clip to schedule: output size, frames, and the pipeline it runs."""

    width: int
    height: int
    frames: int
    variant: str = "tiny"
    tiled: bool = False

    @property
    def size(self) -> int:
        """Output pixels over the whole clip: the order of "longest first"."""
        return self.width * self.height * self.frames


@dataclass(frozen=True, eq=False)
class WorkerCapacity:
    """One worker that is up: its device class, its (calibrated) throughput table, and the seconds until
    it is free of the work it already has."""

    device: str
    table: ThroughputTable
    busy_for: float = 0.0
    free_vram_bytes: int | None = None
    """GPU memory the worker may use (its ready report); None when unknown (a CPU worker)."""
    settings: UpscalerSettings | None = None
    """The upscaler settings the worker runs with: its layouts are chosen with them (required with memory)."""

    def __post_init__(self) -> None:
        _check_layout_settings(self.free_vram_bytes, self.settings)

    def seconds(self, clip: ClipWork) -> float:
        """Estimated wall seconds of ``clip`` on this worker. With the worker's memory known, a clip whose
        expected peak does not fit it (or one asked tiled) is priced in the layout that memory gets, as the
        worker tiles it by itself (untiled where the frame fits after all); with the memory unknown, a tiled
        clip is priced at the table's ``tiled_slowdown``."""
        tiled, slowdown = clip.tiled, None
        if self.free_vram_bytes and (clip.tiled or self.table.peak_bytes(
                self.device, clip.variant, clip.width, clip.height) > self.free_vram_bytes):
            tile, slowdown = _tiling(self.table, clip.variant, self.device, clip.width, clip.height,
                                     self.free_vram_bytes, 0, self.settings)
            tiled = tile > 0
        return estimate_seconds(clip.width, clip.height, clip.frames, self.table, clip.variant, self.device,
                                tiled=tiled, slowdown=slowdown)


@dataclass(frozen=True)
class Assignment:
    """Where and when one clip runs in a schedule (seconds from now)."""

    worker: int
    start: float
    finish: float


def longest_first(clips: Sequence[ClipWork]) -> list[int]:
    """Indices of ``clips``, largest first (ties keep their order)."""
    return sorted(range(len(clips)), key=lambda i: -clips[i].size)


def schedule(clips: Sequence[ClipWork], workers: Sequence[WorkerCapacity]) -> list[Assignment]:
    """Assign ``clips`` in the order given, each to the worker that frees up first (the lowest index among
    equals), each running at its worker's own speed; what the workers pull from the queue does the same."""
    if not workers:
        raise ValueError("no workers to schedule on")
    free_at = [(w.busy_for, i) for i, w in enumerate(workers)]
    heapq.heapify(free_at)
    assignments = []
    for clip in clips:
        start, index = heapq.heappop(free_at)
        finish = start + workers[index].seconds(clip)
        heapq.heappush(free_at, (finish, index))
        assignments.append(Assignment(index, start, finish))
    return assignments


def round_makespan(clips: Sequence[ClipWork], workers: Sequence[WorkerCapacity]) -> float:
    """Seconds until the last of ``clips`` finishes, assigned longest first (inf with no workers)."""
    if not workers:
        return math.inf
    order = longest_first(clips)
    return max((a.finish for a in schedule([clips[i] for i in order], workers)), default=0.0)


def max_content_length(
    width: int,
    height: int,
    workers: Sequence[WorkerCapacity],
    *,
    clips: int = VIDAIO_CLIPS_PER_ROUND,
    round_s: float = VIDAIO_ROUND_SECONDS,
    fps: int = VIDAIO_FPS,
) -> int:
    """Answer to LengthCheck: 10 s clips only if ``clips`` x 10 s of Tiny fit the round on ``workers``
    (their backlog included), else 5 s."""
    work = [ClipWork(width, height, 10 * fps)] * clips
    makespan = round_makespan(work, workers)
    answer = 10 if makespan <= round_s else 5
    log.info("length check workers=%d devices=%s est_round_s=%.1f budget_s=%.0f answer=%d", len(workers),
             ",".join(sorted({w.device for w in workers})) or "-", makespan, round_s, answer)
    return answer
