"""The GPU scheduler: one worker process per device, a priority queue, OOM retry, crash restart.

``await scheduler.run(spec, priority)`` queues one clip and returns its ``TaskOutcome``; cancelling
the awaiting task (the caller went away) removes the clip from the queue or stops it on its worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from miner.config import MinerConfig
from miner.jobs.admission import Backlog, admit
from miner.jobs.queue import PriorityTaskQueue, QueueFull
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.jobs.worker import WorkerConfig, WorkerHooks, worker_main
from miner.metrics import MinerMetrics
from upscaler.calibration import CalibrationStore, ThroughputCalibration
from upscaler.configfiles import load_config
from upscaler.planner import Plan, ThroughputTable, calibration_key, plan

log = logging.getLogger(__name__)

KILL_GRACE_S = 10.0  # a worker silent this long past its task's deadline is killed and restarted


class WorkerStartError(RuntimeError):
    """A worker process could not load the upscaler."""


@dataclass(eq=False)
class _Job:
    spec: TaskSpec
    priority: float
    future: asyncio.Future[TaskOutcome]


@dataclass(eq=False)
class _Slot:
    """One worker process and what it is doing."""

    index: int
    device: str
    process: Any = None
    conn: Connection | None = None
    cancel: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    running: _Job | None = None
    started_at: float = 0.0


def visible_devices(config: MinerConfig) -> list[str]:
    """``jobs.devices`` if set, else every visible CUDA device, else the CPU."""
    configured = list(config.get("jobs.devices"))
    if configured:
        return configured
    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def _calibrated(table: ThroughputTable, settings: dict) -> ThroughputTable:
    """``table`` with a :class:`ThroughputCalibration` from ``[jobs.calibration]`` (unless disabled)."""
    if not settings["enabled"]:
        return table
    return replace(table, calibration=ThroughputCalibration(
        weight=float(settings["weight"]), min_factor=float(settings["min_factor"]),
        max_factor=float(settings["max_factor"])))


MIN_TILE_SIZE = 256


def retry_tile_size(failed_tile: int, planned_tile: int, multiple: int) -> int:
    """The tile of the one retry after an out-of-memory: the planned tile after an untiled attempt, half
    the failed tile (a multiple of the upscaler's ``spatial_multiple``, at least :data:`MIN_TILE_SIZE`)
    after a tiled one."""
    if failed_tile <= 0:
        return planned_tile
    return max(MIN_TILE_SIZE, failed_tile // 2 // multiple * multiple)


class Scheduler:
    """Owns the worker processes and the queue feeding them."""

    def __init__(self, config: MinerConfig, metrics: MinerMetrics) -> None:
        jobs = config.section("jobs")
        self.config = config
        self.metrics = metrics
        devices = visible_devices(config)
        count = len(devices) if jobs["workers"] == "auto" else int(jobs["workers"])
        self._slots = [_Slot(i, devices[i % len(devices)]) for i in range(count)]
        self._queue: PriorityTaskQueue[_Job] = PriorityTaskQueue(int(jobs["max_queue"]))
        self._ctx = mp.get_context("spawn")
        self._table = _calibrated(ThroughputTable.load(config.get("upscaler.throughput"),
                                                          config.get("upscaler.precision")), jobs["calibration"])
        self._threads = ThreadPoolExecutor(max_workers=count + 1, thread_name_prefix="worker-wait")
        self._serve_tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._calibration_store: CalibrationStore | None = None

    # ----- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each has loaded the model."""
        await asyncio.gather(*(self._spawn(slot) for slot in self._slots))
        self._restore_calibration()
        self._serve_tasks = [asyncio.create_task(self._serve(slot), name=f"serve-{slot.index}") for slot in self._slots]
        self._accepting = True

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, fail waiting work, let running work finish within ``grace_s``, stop workers."""
        self._accepting = False
        for job in self._queue.drain():
            self._resolve(job, TaskOutcome.failed(job.spec.task_id, ErrorKind.SHUTDOWN, "miner is shutting down"))
        running = [slot.running.future for slot in self._slots if slot.running is not None]
        if running:
            log.info("waiting for running tasks", extra={"fields": {"running": len(running), "grace_s": grace_s}})
            _, pending = await asyncio.wait(running, timeout=grace_s)
            if pending:
                for slot in self._slots:
                    if slot.cancel is not None:
                        slot.cancel.set()
                await asyncio.wait(pending, timeout=KILL_GRACE_S)
        for task in self._serve_tasks:
            task.cancel()
        await asyncio.gather(*self._serve_tasks, return_exceptions=True)
        for slot in self._slots:
            await asyncio.to_thread(self._terminate, slot)
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.metrics.workers_ready.set(0)

    def _warmup_shapes(self, task_types: list[str]) -> tuple[tuple[int, int, int, int], ...]:
        """(in_w, in_h, out_w, out_h) of each warm-up task type (input = nominal output / scale)."""
        shapes = []
        for name in task_types:
            task = self.config.tasks[name]
            shapes.append((task.width // task.scale, task.height // task.scale, task.width, task.height))
        return tuple(dict.fromkeys(shapes))

    async def _spawn(self, slot: _Slot) -> None:
        jobs = self.config.section("jobs")
        upscaler = self.config.section("upscaler")
        worker_config = WorkerConfig(
            index=slot.index,
            device=slot.device,
            upscaler_config=upscaler["config"],
            upscaler_overrides=self.config.upscaler_overrides,
            log_level=self.config.get("log.level"),
            log_format=self.config.get("log.format"),
            hooks=WorkerHooks(**jobs["test_hooks"]),
            warmup=self._warmup_shapes(jobs["warmup_tasks"]),
            progress_log_s=float(jobs["progress_log_s"]),
        )
        parent, child = self._ctx.Pipe()
        slot.cancel = self._ctx.Event()
        slot.process = self._ctx.Process(
            target=worker_main, args=(worker_config, child, slot.cancel), name=f"flashvsr-worker-{slot.index}",
            daemon=True,
        )
        began = time.perf_counter()
        slot.process.start()
        child.close()
        slot.conn = parent
        reply = await asyncio.get_running_loop().run_in_executor(
            self._threads, _receive, parent, slot.process.sentinel, float(jobs["worker_start_timeout_s"]))
        if reply is None or reply[0] != "ready":
            self._terminate(slot)
            detail = reply[1] if reply else "exited or timed out before loading"
            raise WorkerStartError(f"worker {slot.index} on {slot.device} failed to start: {detail}")
        slot.info = reply[1]
        self.metrics.workers_ready.inc()
        log.info("worker ready", extra={"fields": {"worker": slot.index, **slot.info,
                                                   "seconds": round(time.perf_counter() - began, 1)}})

    @staticmethod
    def _terminate(slot: _Slot) -> None:
        if slot.process is None:
            return
        if slot.process.is_alive() and slot.conn is not None:
            try:
                slot.conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            slot.process.join(timeout=5)
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=5)
        if slot.conn is not None:
            slot.conn.close()

    async def _restart(self, slot: _Slot) -> None:
        self.metrics.workers_ready.dec()
        self.metrics.worker_restarts.inc()
        await asyncio.to_thread(self._terminate, slot)
        await self._spawn(slot)

    # ----- planning and admission ------------------------------------------------------------
    @property
    def device_class(self) -> str:
        """The planner's device name of the workers (all workers are assumed alike)."""
        return self._slots[0].info.get("device_class", "cpu")

    @property
    def workers(self) -> int:
        return len(self._slots)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def table(self) -> ThroughputTable:
        return self._table

    def queue_depth(self) -> int:
        return len(self._queue)

    def plan(self, width: int, height: int, frames: int, deadline_s: float | None) -> Plan:
        """Variant, tiling and estimated seconds for one clip on these workers."""
        jobs = self.config.section("jobs")
        free = [s.info.get("free_vram_bytes") for s in self._slots if s.info.get("free_vram_bytes") is not None]
        return plan(
            width, height, frames, free_vram_bytes=min(free) if free else None, deadline_s=deadline_s,
            table=self._table, device=self.device_class, variant=self.config.get("upscaler.variant"),
            prefer_quality=bool(jobs["prefer_quality"]), long_clip_frames=int(jobs["long_clip_frames"]),
            tile_size=int(jobs["oom_retry_tile_size"]),
        )

    def backlog(self, priority: float) -> Backlog:
        """Work ahead of a request with ``priority``: running remainders and outranking queued clips."""
        now = time.time()
        busy = tuple(
            max(slot.running.spec.est_seconds - (now - slot.started_at), 0.0) if slot.running else 0.0
            for slot in self._slots
        )
        queued = tuple(job.spec.est_seconds for job in self._queue.items() if job.priority >= priority)
        return Backlog(busy, queued)

    def admit(self, estimates: list[float], deadline: float, priority: float) -> list[str | None]:
        """Admission decision per clip: None, or why it cannot finish before ``deadline``."""
        if not self._accepting:
            return ["miner is shutting down"] * len(estimates)
        return admit(self.backlog(priority), estimates, deadline - time.time())

    # ----- running ---------------------------------------------------------------------------
    async def run(self, spec: TaskSpec, priority: float) -> TaskOutcome:
        """Queue ``spec`` and wait for its outcome (cancel the awaiting task to abandon it)."""
        if not self._accepting:
            return TaskOutcome.failed(spec.task_id, ErrorKind.SHUTDOWN, "miner is shutting down")
        job = _Job(spec, priority, asyncio.get_running_loop().create_future())
        try:
            displaced = await self._queue.put(job, priority)
        except QueueFull as exc:
            self.metrics.refusals.labels("queue_full").inc()
            return TaskOutcome.failed(spec.task_id, ErrorKind.REFUSED, str(exc))
        if displaced is not None:
            self.metrics.refusals.labels("displaced").inc()
            self._resolve(displaced, TaskOutcome.failed(
                displaced.spec.task_id, ErrorKind.REFUSED, "queue full: displaced by a higher-stake validator"))
        self.metrics.queue_depth.set(len(self._queue))
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    def _abandon(self, job: _Job) -> None:
        if self._queue.remove(job):
            self.metrics.queue_depth.set(len(self._queue))
            self._resolve(job, TaskOutcome.failed(job.spec.task_id, ErrorKind.CANCELLED, "caller went away"))
            return
        for slot in self._slots:
            if slot.running is job:
                log.info("cancelling running task", extra={"fields": {"task_id": job.spec.task_id, "worker": slot.index}})
                slot.cancel.set()

    @staticmethod
    def _resolve(job: _Job, outcome: TaskOutcome) -> None:
        if not job.future.done():
            job.future.set_result(outcome)

    async def _serve(self, slot: _Slot) -> None:
        while True:
            job = await self._queue.get()
            self.metrics.queue_depth.set(len(self._queue))
            if time.time() >= job.spec.deadline:
                self._resolve(job, TaskOutcome.failed(job.spec.task_id, ErrorKind.DEADLINE, "deadline passed while queued"))
                continue
            slot.running = job
            self.metrics.running.inc()
            try:
                outcome = await self._execute(slot, job.spec)
                if outcome.error_kind == ErrorKind.OOM:
                    outcome = await self._retry_tiled(slot, job.spec, outcome)
            finally:
                slot.running = None
                self.metrics.running.dec()
            self._calibrate(outcome)
            self._resolve(job, outcome)

    def _calibrate(self, outcome: TaskOutcome) -> None:
        """Fold a finished clip's measured frames/s into the table's calibration (tiled runs apart)."""
        calibration, report = self._table.calibration, outcome.report
        min_frames = int(self.config.get("jobs.calibration.min_frames"))
        if (calibration is None or not outcome.ok or not report or report["frames"] < min_frames
                or report["frames_per_second"] <= 0):
            return
        width, height = report["out_size"]
        variant, tiled = report["variant"], bool(report["tiled"])
        table_fps = self._table.frames_per_second(self.device_class, variant, width, height, tiled=tiled,
                                                  calibrated=False)
        key = calibration_key(variant, tiled)
        factor = calibration.observe(key, width, height, report["frames_per_second"], table_fps)
        self.metrics.throughput_factor.labels(key).set(factor)
        if self._calibration_store is not None:
            self._calibration_store.save(calibration)

    def _restore_calibration(self) -> None:
        """Load the calibration saved by an earlier run on this device class and table (once the workers
        have said what device they run on)."""
        path = str(self.config.get("jobs.calibration.state_path"))
        calibration = self._table.calibration
        if calibration is None or not path:
            return
        self._calibration_store = CalibrationStore(
            Path(path).expanduser(), {"device_class": self.device_class, "table": self._table.fingerprint()})
        if self._calibration_store.load_into(calibration):
            for record in calibration.state():
                self.metrics.throughput_factor.labels(record["variant"]).set(record["factor"])

    async def _retry_tiled(self, slot: _Slot, spec: TaskSpec, first: TaskOutcome) -> TaskOutcome:
        """After an out-of-memory: plan again as if no untiled run fits, and retry once tiled."""
        replanned = plan(
            spec.width, spec.height, spec.frames, free_vram_bytes=0, deadline_s=spec.deadline - time.time(),
            table=self._table, device=self.device_class, variant=spec.variant,
            tile_size=int(self.config.get("jobs.oom_retry_tile_size")),
        )
        multiple = int(load_config(self.config.get("upscaler.config"))["defaults"]["spatial_multiple"])
        tile = retry_tile_size(spec.tile_size, replanned.tile_size or int(self.config.get("jobs.oom_retry_tile_size")),
                               multiple)
        log.warning("retrying tiled after out-of-memory", extra={"fields": {
            "task_id": spec.task_id, "tile": tile, "first_error": first.message}})
        return await self._execute(slot, spec.retry_tiled(tile))

    async def _execute(self, slot: _Slot, spec: TaskSpec) -> TaskOutcome:
        """Send one task to the slot's worker and wait for its reply, death, or a hung deadline."""
        slot.cancel.clear()
        slot.started_at = time.time()
        slot.conn.send(("task", spec))
        timeout = max(spec.deadline - time.time(), 0.0) + KILL_GRACE_S
        reply = await asyncio.get_running_loop().run_in_executor(
            self._threads, _receive, slot.conn, slot.process.sentinel, timeout)
        if reply is not None and reply[0] == "done":
            return reply[1]
        crashed = not slot.process.is_alive()
        kind = ErrorKind.CRASH if crashed else ErrorKind.DEADLINE
        message = (f"worker {slot.index} exited with code {slot.process.exitcode}" if crashed
                   else f"worker {slot.index} did not stop {KILL_GRACE_S:.0f}s after the deadline")
        log.error("worker lost; restarting it", extra={"fields": {"task_id": spec.task_id, "worker": slot.index,
                                                                   "reason": message}})
        await self._restart(slot)
        return TaskOutcome.failed(spec.task_id, kind, message)


def _receive(conn: Connection, sentinel: int, timeout: float) -> tuple[str, Any] | None:
    """Blocking: the next message from a worker, or None if it died or ``timeout`` passed."""
    ready = wait([conn, sentinel], timeout=timeout)
    if conn in ready:
        try:
            return conn.recv()
        except (EOFError, OSError):
            return None
    return None
