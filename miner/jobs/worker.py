"""The worker core shared by every kind of worker (a local process, :mod:`miner.jobs.local_pool`; a Ray
actor, :mod:`miner.cluster.ray_pool`): loads the upscaler once, keeps it warm, and runs one
``TaskSpec`` at a time into a ``TaskOutcome``. A cancel event (anything with ``is_set()``) stops the
running task at the next chunk boundary.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.log import setup_logging
from upscaler import vram
from upscaler.api import Upscaler
from upscaler.errors import InputVideoError, OutputTooLargeError, UpscaleCancelled
from upscaler.report import Progress, UpscaleReport
from upscaler.settings import UpscalerSettings, load_settings
from upscaler.tile_plan import TileLayout, plan_layout
from upscaler.video import fit_to_size
from upscaler.video.synthetic import write_test_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerHooks:
    """Fault injection for tests (``[jobs.test_hooks]``); all off by default."""

    oom_if_src_contains: str = ""
    crash_if_src_contains: str = ""
    delay_s: float = 0.0


WARMUP_FRAMES = 29


class RetryDoesNotFit(Exception):
    """No tile layout fits the memory usable for the retry after an out-of-memory."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to start (picklable; sent once at spawn)."""

    index: int
    device: str
    upscaler_config: str
    upscaler_overrides: dict[str, Any]
    log_level: str = "INFO"
    log_format: str = "kv"
    hooks: WorkerHooks = field(default_factory=WorkerHooks)
    warmup: tuple[tuple[int, int, int, int], ...] = ()
    """(in_w, in_h, out_w, out_h) shapes upscaled once at start on a GPU (kernel autotuning, cuDNN
    plans), so the first real round does not pay for them."""
    progress_log_s: float = 10.0
    """A running clip logs its progress at most this often (0: never)."""


class ProgressLog:
    """Progress callback of one clip: logs frames done, frames/s and ETA at most every ``interval_s``."""

    def __init__(self, task_id: str, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.task_id = task_id
        self.interval_s = interval_s
        self._clock = clock
        self._last = clock()

    def __call__(self, progress: Progress) -> None:
        now = self._clock()
        if self.interval_s <= 0 or now - self._last < self.interval_s:
            return
        self._last = now
        eta = progress.eta_s
        log.info("progress", extra={"fields": {
            "task_id": self.task_id, "frames": progress.frames_done, "of": progress.frames_total,
            "fps": round(progress.frames_per_second, 2), "eta_s": None if eta is None else round(eta, 1)}})


def device_class(device: str) -> str:
    """The planner's name for this device: ``cpu``, or the GPU model (``h100``, ``a100``, ...)."""
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device))
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return match.group(1).lower() if match else name.lower()


def worker_settings(upscaler_config: str, device: str, overrides: Mapping[str, Any]) -> UpscalerSettings:
    """The settings a worker on ``device`` loads and runs its warm-up and every clip with (the doctor's
    warm-up too): ``upscaler_config`` under the miner's ``[upscaler]`` keys, with the tile layout chosen
    from the worker's usable memory (``tiling.auto``: untiled where the frame fits, within ``max_vram_gib``;
    the retry after an out-of-memory in a layout chosen the same way). The planner prices clips in layouts
    chosen with them (the scheduler's, the doctor's)."""
    settings = load_settings(upscaler_config, device=device, **overrides)
    return settings.with_overrides(tiling=replace(settings.tiling, auto=True))


def free_vram(device: str) -> int | None:
    """GPU memory this worker may use, its loaded models included (the planner's peaks include them):
    free plus held, at most ``max_vram_gib`` (:func:`upscaler.vram.usable_bytes`); None on the CPU."""
    return vram.usable_bytes(torch.device(device))


def prepare_process(config: WorkerConfig) -> None:
    """Process-wide settings of a worker, before CUDA initialises: logging, and expandable segments (the
    streaming buffers change size between the first and later steps, and expandable segments keep that
    from fragmenting the 4K working set; measured: fits in 80 GB)."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    setup_logging(config.log_level, config.log_format)


class CancelFlag(Protocol):
    """A multiprocessing or threading ``Event``: set by the pool to stop the running task."""

    def is_set(self) -> bool: ...


def gpu_name(device: str) -> str:
    """The device's marketing name (``NVIDIA H100 80GB HBM3``), or ``cpu``."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def worker_info(device: str) -> dict[str, Any]:
    """What a ready worker reports: its device, the planner's class of it, free memory, host and pid."""
    return {"device": device, "device_class": device_class(device), "gpu": gpu_name(device),
            "free_vram_bytes": free_vram(device), "host": socket.gethostname(), "pid": os.getpid()}


def _layout_fields(spec: TaskSpec, usable: int, layout: TileLayout) -> dict[str, Any]:
    """The log fields of an attempt's tile layout."""
    return {"task_id": spec.task_id, "usable_gib": round(usable / vram.GIB, 2), "budget_gib": round(layout.budget_gib, 2),
            "peak_gib": round(layout.peak_gib, 2), "tiles": layout.tiles, "tile": f"{layout.tile_width}x{layout.tile_height}",
            "decoder_frames": layout.decoder_frames, "blend_frames": layout.blend_frames}


class WorkerCore:
    """Holds the warm ``Upscaler`` of one worker and runs its tasks (one at a time)."""

    def __init__(self, config: WorkerConfig, cancel: CancelFlag) -> None:
        if config.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(config.device))
        self.config = config
        self.cancel = cancel
        self.settings = worker_settings(config.upscaler_config, config.device, config.upscaler_overrides)
        self.upscaler = Upscaler.load(self.settings)
        if config.device.startswith("cuda"):
            self._warm_up(config.warmup)

    def _warm_up(self, shapes: tuple[tuple[int, int, int, int], ...]) -> None:
        """Upscale a short generated clip at each shape (29 frames: the first and one steady step), tiled as
        a task of that shape would be on this worker's memory (:func:`worker_settings`)."""
        with tempfile.TemporaryDirectory(prefix="flashvsr-warmup-") as tmp:
            for in_w, in_h, out_w, out_h in shapes:
                began = time.perf_counter()
                src = write_test_clip(Path(tmp) / f"warm-{in_w}x{in_h}.mp4", in_w, in_h, WARMUP_FRAMES)
                with torch.inference_mode():
                    self.upscaler.upscale_file(src, Path(tmp) / "out.mp4", width=out_w, height=out_h, variant="tiny")
                torch.cuda.empty_cache()
                log.info("warm-up done", extra={"fields": {"shape": f"{in_w}x{in_h}->{out_w}x{out_h}",
                                                           "seconds": round(time.perf_counter() - began, 1)}})

    def run(self, spec: TaskSpec) -> TaskOutcome:
        """Upscale one clip and fit it under the size cap; every failure becomes an outcome."""
        began = time.perf_counter()
        layout: TileLayout | None = None
        try:
            layout = self._layout(spec)
            report = self._upscale(spec, layout)
            fit_began = time.perf_counter()
            self._fit(spec)
            seconds = dict(report.seconds, fit=time.perf_counter() - fit_began)
            return TaskOutcome(spec.task_id, True, report=report.as_dict(), seconds=seconds,
                               out_bytes=Path(spec.dst).stat().st_size, attempts=spec.attempt + 1)
        except torch.OutOfMemoryError as exc:
            self._free_memory()
            outcome = self._failed(spec, ErrorKind.OOM, f"out of memory: {str(exc).splitlines()[0]}")
            outcome.predicted_peak_gib = layout.peak_gib if layout is not None else 0.0
            return outcome
        except RetryDoesNotFit as exc:
            return self._failed(spec, ErrorKind.OOM, str(exc))
        except InputVideoError as exc:
            return self._failed(spec, ErrorKind.INPUT, str(exc))
        except UpscaleCancelled:
            kind = ErrorKind.DEADLINE if time.time() >= spec.deadline else ErrorKind.CANCELLED
            return self._failed(spec, kind, f"stopped after {time.perf_counter() - began:.1f}s")
        except OutputTooLargeError as exc:
            return self._failed(spec, ErrorKind.TOO_LARGE, str(exc))
        except Exception as exc:
            log.exception("task failed", extra={"fields": {"task_id": spec.task_id}})
            self._free_memory()
            return self._failed(spec, ErrorKind.ERROR, f"{exc.__class__.__name__}: {exc}")
        finally:
            gc.collect()  # a tensor caught in a reference cycle must not hold GPU memory into the next clip

    def _should_cancel(self, spec: TaskSpec) -> bool:
        return self.cancel.is_set() or time.time() >= spec.deadline

    def _upscale(self, spec: TaskSpec, layout: TileLayout | None) -> UpscaleReport:
        self._apply_hooks(spec)
        with torch.inference_mode():
            return self.upscaler.upscale_file(
                spec.src, spec.dst, width=spec.width, height=spec.height, variant=spec.variant, crf=spec.crf,
                codec=spec.codec, preset=spec.preset or None,
                should_cancel=lambda: self._should_cancel(spec),
                progress=ProgressLog(spec.task_id, self.config.progress_log_s), layout=layout,
            )

    def _layout(self, spec: TaskSpec) -> TileLayout | None:
        """The tiles of this attempt, from the memory usable now (:func:`upscaler.tile_plan.plan_layout`: the
        layout the planner priced, the memory model's margin and the blend included; the smallest, with a
        warning, when none fits), or of the retry after an out-of-memory (:meth:`_retry_layout`). None off CUDA
        (no memory to fit: the run plans as the settings say)."""
        if spec.attempt > 0:
            return self._retry_layout(spec)
        usable = free_vram(self.config.device)
        if usable is None:
            return None
        layout = plan_layout(spec.width, spec.height, usable, spec.variant, self.settings)
        fields = _layout_fields(spec, usable, layout)
        if layout.fits:
            log.info("tile layout", extra={"fields": fields})
        else:
            log.warning("no tile layout fits: running the smallest", extra={"fields": fields})
        return layout

    def _retry_layout(self, spec: TaskSpec) -> TileLayout | None:
        """The tiles of the retry after an out-of-memory: once what the failed attempt held is released, the
        layout of :func:`upscaler.tile_plan.plan_layout` for the memory usable now, but at most the failed
        attempt's predicted peak (its layout ran out, so the model under-predicted it: the retry's budget is that
        peak less the model's margins, and smaller tiles, decoder passes or blend groups are taken), tiled where
        the frame can be cut; :class:`RetryDoesNotFit` when none fits. None off CUDA."""
        self._free_memory()
        usable = free_vram(self.config.device)
        if usable is None:
            return None
        failed = int(spec.failed_peak_gib * vram.GIB)
        memory = min(usable, failed) if failed > 0 else usable
        layout = plan_layout(spec.width, spec.height, memory, spec.variant, self.settings, min_tiles=2)
        fields = _layout_fields(spec, usable, layout)
        fields["failed_peak_gib"] = round(spec.failed_peak_gib, 2) if failed > 0 else None
        if not layout.fits:
            log.warning("out-of-memory retry not run: no tile layout fits", extra={"fields": fields})
            below = f" below the failed attempt's predicted {spec.failed_peak_gib:.1f} GiB" if memory < usable else ""
            raise RetryDoesNotFit(
                f"out of memory, and no tile layout fits the {usable / vram.GIB:.1f} GiB usable after it{below}: "
                f"the smallest, {layout.describe()}; retry not run")
        log.info("out-of-memory retry layout", extra={"fields": fields})
        return layout

    def _apply_hooks(self, spec: TaskSpec) -> None:
        """Test fault injection: a hard crash, a real OOM on the first attempt, a cancellable delay."""
        hooks = self.config.hooks
        name = Path(spec.src).name
        if hooks.crash_if_src_contains and hooks.crash_if_src_contains in name:
            os._exit(70)
        if hooks.oom_if_src_contains and hooks.oom_if_src_contains in name and spec.attempt == 0:
            raise torch.OutOfMemoryError(f"injected out-of-memory for {name} (test hook)")
        until = time.time() + hooks.delay_s
        while time.time() < until:
            if self._should_cancel(spec):
                raise UpscaleCancelled("cancelled during the test delay")
            time.sleep(0.05)

    def _fit(self, spec: TaskSpec) -> None:
        if Path(spec.dst).stat().st_size > spec.max_bytes:
            fit_to_size(spec.dst, spec.max_bytes)
        size = Path(spec.dst).stat().st_size
        if size > spec.max_bytes:
            raise OutputTooLargeError(f"output is {size} bytes, cap {spec.max_bytes}")

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def _failed(spec: TaskSpec, kind: str, message: str) -> TaskOutcome:
        Path(spec.dst).unlink(missing_ok=True)
        outcome = TaskOutcome.failed(spec.task_id, kind, message)
        outcome.attempts = spec.attempt + 1
        return outcome
