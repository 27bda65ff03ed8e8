"""The GPU scheduler: one worker per GPU (local processes or Ray actors), a priority queue, OOM retry,
recovery of lost workers.

``await scheduler.run(spec, priority)`` queues one clip and returns its ``TaskOutcome``; cancelling
the awaiting task (the caller went away) removes the clip from the queue or stops it on its worker.
Admission and the LengthCheck answer price work on the workers that are up now, each at its own
calibrated speed (:func:`upscaler.planner.schedule`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch

from miner.config import MinerConfig
from miner.jobs.admission import Backlog, admit
from miner.jobs.inputs import InputFailed
from miner.jobs.pool import KILL_GRACE_S, InputHolder, WorkerHandle, WorkerLost, WorkerPool, WorkerStartError
from miner.jobs.queue import PriorityTaskQueue, QueueFull
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.jobs.worker import WorkerConfig, WorkerHooks, worker_settings
from miner.metrics import MinerMetrics
from upscaler.calibration import CalibrationStore, ThroughputCalibration
from upscaler.planner import (ClipWork, Plan, ThroughputTable, WorkerCapacity, calibration_key, plan,
                              tiled_slowdown_for)
from upscaler.video import VideoInfo

log = logging.getLogger(__name__)

STARTING, IDLE, BUSY, RESTARTING, DOWN, STOPPED = "starting", "idle", "busy", "restarting", "down", "stopped"
RECOVERY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # waits between attempts to bring a lost worker back
DOWN_LOG_EVERY_S = 600.0  # at the longest backoff, "worker still down" is logged this often (or when its error changes)
STAGE_ATTEMPTS = 2  # workers tried for one clip's download (Ray backend) when the first is lost meanwhile


@dataclass(eq=False)
class _Job:
    spec: TaskSpec
    priority: float
    future: asyncio.Future[TaskOutcome]
    losses: int = 0


def down_log_due(attempt: int, error: str, logged_error: str, since_logged_s: float) -> bool:
    """Whether a failed attempt to bring a worker back is logged: every one while the backoff grows, then
    one in :data:`DOWN_LOG_EVERY_S` or when the error changes (a worker down for hours is not 120 lines an hour)."""
    return attempt < len(RECOVERY_BACKOFF_S) or error != logged_error or since_logged_s >= DOWN_LOG_EVERY_S


@dataclass(eq=False)
class _Slot:
    """One worker and what it is doing."""

    handle: WorkerHandle
    info: dict[str, Any] = field(default_factory=dict)
    state: str = STARTING
    running: _Job | None = None
    started_at: float = 0.0
    done: int = 0
    failed: int = 0
    staging: int = 0             # clips it is downloading for admission (Ray backend)
    recovery: asyncio.Task[None] | None = None

    @property
    def index(self) -> int:
        return self.handle.index

    @property
    def up(self) -> bool:
        return self.state in (IDLE, BUSY)


def visible_devices(config: MinerConfig) -> list[str]:
    """``jobs.devices`` if set, else every visible CUDA device, else the CPU."""
    configured = list(config.get("jobs.devices"))
    if configured:
        return configured
    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def clip_work(spec: TaskSpec) -> ClipWork:
    """The planner's view of a task."""
    return ClipWork(spec.width, spec.height, spec.frames, spec.variant, spec.tiled)


class Scheduler:
    """Owns the workers and the queue feeding them."""

    def __init__(self, config: MinerConfig, metrics: MinerMetrics) -> None:
        jobs = config.section("jobs")
        self.config = config
        self.metrics = metrics
        self.backend = str(config.get("cluster.backend"))
        self._slots: list[_Slot] = []
        self._queue: PriorityTaskQueue[_Job] = PriorityTaskQueue(int(jobs["max_queue"]))
        self._base_table = ThroughputTable.load(config.get("upscaler.throughput"), config.get("upscaler.precision"))
        # what every worker runs with (the device aside, which no tile layout depends on): clips are priced with it
        self.settings = worker_settings(config.get("upscaler.config"), "auto", config.upscaler_overrides)
        self._tables: dict[str, ThroughputTable] = {}
        self._stores: dict[str, CalibrationStore] = {}
        self._lost_clip_retries = int(config.get("cluster.lost_clip_retries")) if self.backend == "ray" else 0
        self._serve_tasks: list[asyncio.Task[None]] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._pool = self._make_pool()

    # ----- lifecycle -------------------------------------------------------------------------
    def worker_config(self, index: int, device: str) -> WorkerConfig:
        """What worker ``index`` needs to load the upscaler on ``device`` (any backend)."""
        jobs = self.config.section("jobs")
        upscaler = self.config.section("upscaler")
        return WorkerConfig(
            index=index,
            device=device,
            upscaler_config=upscaler["config"],
            upscaler_overrides=self.config.upscaler_overrides,
            log_level=self.config.get("log.level"),
            log_format=self.config.get("log.format"),
            hooks=WorkerHooks(**jobs["test_hooks"]),
            warmup=self._warmup_shapes(jobs["warmup_tasks"]),
            progress_log_s=float(jobs["progress_log_s"]),
        )

    def _make_pool(self) -> WorkerPool:
        start_timeout = float(self.config.get("jobs.worker_start_timeout_s"))
        if self.backend == "ray":
            from miner.cluster.ray_pool import RayPool  # Ray is imported only when configured

            return RayPool(self.config, self.worker_config, start_timeout)
        from miner.jobs.local_pool import LocalPool

        devices = visible_devices(self.config)
        workers = self.config.get("jobs.workers")
        count = len(devices) if workers == "auto" else int(workers)
        return LocalPool([self.worker_config(i, devices[i % len(devices)]) for i in range(count)], start_timeout)

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the model (or failed: a worker that fails to
        start is retried in the background; the miner starts when at least one is up), then watch them."""
        self._slots = [_Slot(handle) for handle in await self._pool.new_workers()]
        errors = await asyncio.gather(*(self._bring_up(slot) for slot in self._slots), return_exceptions=True)
        if not any(slot.up for slot in self._slots):
            raise next((e for e in errors if isinstance(e, BaseException)), WorkerStartError("no workers"))
        self._serve_tasks = [asyncio.create_task(self._serve(slot), name=f"serve-{slot.index}") for slot in self._slots]
        self._watch_task = asyncio.create_task(self._watch(), name="watch-workers")
        self._accepting = True

    async def _bring_up(self, slot: _Slot) -> None:
        began = time.perf_counter()
        try:
            info = await slot.handle.start()
        except Exception as exc:
            slot.state = DOWN
            log.error("worker failed to start; retrying in the background",
                      extra={"fields": {"worker": slot.index, "backend": slot.handle.backend, "error": str(exc)[:2000]}})
            raise
        self._mark_up(slot, info)
        log.info("worker ready", extra={"fields": {"worker": slot.index, "backend": slot.handle.backend, **info,
                                                   "seconds": round(time.perf_counter() - began, 1)}})

    def _mark_up(self, slot: _Slot, info: dict[str, Any]) -> None:
        old = slot.info
        slot.info, slot.state = info, IDLE
        self.metrics.workers_ready.inc()
        if old and old != info:
            self.metrics.forget_worker(str(slot.index), old)
        self.metrics.worker_info.labels(str(slot.index), info.get("node", ""), info.get("gpu", ""),
                                        info.get("device_class", "")).set(1)
        self.metrics.worker_up.labels(str(slot.index)).set(1)
        self._update_worker_gauges()

    def _mark_down(self, slot: _Slot, state: str) -> None:
        if slot.up:
            self.metrics.workers_ready.dec()
        slot.state = state
        self.metrics.worker_up.labels(str(slot.index)).set(0)

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, fail waiting work, let running work finish within ``grace_s``, stop workers."""
        self._accepting = False
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        for job in self._queue.drain():
            self._resolve(job, TaskOutcome.failed(job.spec.task_id, ErrorKind.SHUTDOWN, "miner is shutting down"))
        running = [slot.running.future for slot in self._slots if slot.running is not None]
        if running:
            log.info("waiting for running tasks", extra={"fields": {"running": len(running), "grace_s": grace_s}})
            _, pending = await asyncio.wait(running, timeout=grace_s)
            if pending:
                for slot in self._slots:
                    slot.handle.cancel()
                await asyncio.wait(pending, timeout=KILL_GRACE_S)
        background = [*self._serve_tasks, *(s.recovery for s in self._slots if s.recovery)]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await asyncio.gather(*(slot.handle.stop() for slot in self._slots), return_exceptions=True)
        for slot in self._slots:
            self._mark_down(slot, STOPPED)
        self.metrics.workers_ready.set(0)

    def _warmup_shapes(self, task_types: list[str]) -> tuple[tuple[int, int, int, int], ...]:
        """(in_w, in_h, out_w, out_h) of each warm-up task type (input = nominal output / scale)."""
        shapes = []
        for name in task_types:
            task = self.config.tasks[name]
            shapes.append((task.width // task.scale, task.height // task.scale, task.width, task.height))
        return tuple(dict.fromkeys(shapes))

    def _recovering(self, slot: _Slot) -> asyncio.Task[None]:
        """The task bringing ``slot``'s worker up (started unless one runs)."""
        if slot.recovery is None or slot.recovery.done():
            slot.recovery = asyncio.create_task(self._recover(slot), name=f"recover-{slot.index}")
        return slot.recovery

    async def _recover(self, slot: _Slot) -> None:
        """Bring a lost worker back (a new process; the actor Ray restarted, or a new one), or a worker added
        since the start up, retrying with a backoff for as long as it takes; the LengthCheck and admission
        see it only once it is up."""
        added = not slot.info
        first_failure, logged_at, logged_error = time.monotonic(), -math.inf, ""
        for attempt in itertools.count():
            self._mark_down(slot, STARTING if added else RESTARTING)
            began = time.perf_counter()
            try:
                info = await slot.handle.restart()
            except Exception as exc:
                wait_s = RECOVERY_BACKOFF_S[min(attempt, len(RECOVERY_BACKOFF_S) - 1)]
                self._mark_down(slot, DOWN)
                error, now = str(exc)[:500], time.monotonic()
                if down_log_due(attempt, error, logged_error, now - logged_at):
                    logged_at, logged_error = now, error
                    log.warning("worker still down", extra={"fields": {
                        "worker": slot.index, "attempt": attempt + 1, "down_s": round(now - first_failure),
                        "retry_in_s": wait_s, "error": error,
                        "next": "the miner keeps retrying; check the GPU (nvidia-smi) and the error above"}})
                await asyncio.sleep(wait_s)
                continue
            self._mark_up(slot, info)
            log.info("worker ready" if added else "worker back", extra={"fields": {
                "worker": slot.index, "backend": slot.handle.backend, **info,
                "seconds": round(time.perf_counter() - began, 1)}})
            return

    async def _watch(self) -> None:
        """Every ``jobs.worker_check_s``: check the idle workers (one that died is out of the capacity at once
        and brought back; one restarted behind the scheduler's back, by Ray, is updated), and start the
        workers a grown cluster has room for. A busy worker's loss shows in its clip."""
        interval = float(self.config.get("jobs.worker_check_s"))
        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(*(self._check(slot) for slot in self._slots if slot.state == IDLE))
            try:
                added = await self._pool.new_workers()
            except Exception as exc:
                log.warning("cannot count the workers there is room for", extra={"fields": {"error": str(exc)[:500]}})
                continue
            for handle in added:
                slot = _Slot(handle)
                self._slots.append(slot)
                log.info("worker added", extra={"fields": {"worker": slot.index, "backend": handle.backend,
                                                           "workers": len(self._slots)}})
                self._serve_tasks.append(asyncio.create_task(self._serve(slot), name=f"serve-{slot.index}"))

    async def _check(self, slot: _Slot) -> None:
        """One idle worker's check (see :meth:`_watch`)."""
        try:
            info = await slot.handle.check()
        except Exception as exc:  # WorkerLost, or a failure of the transport
            if slot.state != IDLE:  # it took a clip meanwhile: that clip's outcome tells
                return
            self._mark_down(slot, DOWN)
            self.metrics.worker_restarts.inc()
            log.error("worker lost while idle", extra={"fields": {"worker": slot.index, "node": slot.info.get("node"),
                                                                  "reason": str(exc)[:500]}})
            self._recovering(slot)
            return
        if info is not None and info != slot.info and slot.state == IDLE:
            self.metrics.worker_restarts.inc()
            log.warning("worker restarted", extra={"fields": {"worker": slot.index, "was_node": slot.info.get("node"),
                                                              **info}})
            self._mark_down(slot, RESTARTING)
            self._mark_up(slot, info)

    # ----- planning and admission ------------------------------------------------------------
    def table_for(self, device_class: str) -> ThroughputTable:
        """The throughput table of one device class, with that class's own calibration (restored from
        ``jobs.calibration.state_path`` when it was saved by an earlier run on the same class and table)."""
        table = self._tables.get(device_class)
        if table is not None:
            return table
        settings = self.config.section("jobs")["calibration"]
        table = self._base_table
        if settings["enabled"]:
            calibration = ThroughputCalibration(weight=float(settings["weight"]), min_factor=float(settings["min_factor"]),
                                                max_factor=float(settings["max_factor"]))
            table = replace(table, calibration=calibration)
            if settings["state_path"]:
                store = CalibrationStore.for_device(Path(str(settings["state_path"])).expanduser(), device_class,
                                                    table.fingerprint())
                self._stores[device_class] = store
                store.load_into(calibration)
        self._tables[device_class] = table
        return table

    def _class_of(self, slot: _Slot) -> str:
        return str(slot.info.get("device_class", "cpu"))

    @property
    def device_class(self) -> str:
        """The device class of the first worker that is up (the reference for per-clip plans)."""
        slot = next((s for s in self._slots if s.up), next((s for s in self._slots if s.info), None))
        return self._class_of(slot) if slot else "cpu"

    @property
    def workers(self) -> int:
        return len(self._slots)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def table(self) -> ThroughputTable:
        """The table of the reference device class."""
        return self.table_for(self.device_class)

    def queue_depth(self) -> int:
        return len(self._queue)

    def plan(self, width: int, height: int, frames: int, deadline_s: float | None) -> Plan:
        """Variant, tiling and estimated seconds for one clip (on the reference device class)."""
        jobs = self.config.section("jobs")
        free = [s.info.get("free_vram_bytes") for s in self._slots if s.info.get("free_vram_bytes") is not None]
        return plan(
            width, height, frames, free_vram_bytes=min(free) if free else None, deadline_s=deadline_s,
            table=self.table, device=self.device_class, variant=self.config.get("upscaler.variant"),
            prefer_quality=bool(jobs["prefer_quality"]), long_clip_frames=int(jobs["long_clip_frames"]),
            tile_size=int(jobs["oom_retry_tile_size"]), settings=self.settings,
        )

    def capacity(self) -> list[WorkerCapacity]:
        """The workers that are up now, each with its calibrated table and the seconds left of its running clip."""
        now = time.time()
        workers = []
        for slot in self._slots:
            if not slot.up:
                continue
            device = self._class_of(slot)
            worker = WorkerCapacity(device, self.table_for(device), free_vram_bytes=slot.info.get("free_vram_bytes"),
                                    settings=self.settings)
            if slot.running is not None:
                left = worker.seconds(clip_work(slot.running.spec)) - (now - slot.started_at)
                worker = replace(worker, busy_for=max(left, 0.0))
            workers.append(worker)
        return workers

    def backlog(self, priority: float) -> Backlog:
        """Work ahead of a request with ``priority``: the workers up (with their running remainders) and
        the queued clips that outrank it."""
        queued = tuple(clip_work(job.spec) for job in self._queue.items() if job.priority >= priority)
        return Backlog(tuple(self.capacity()), queued)

    def admit(self, clips: list[ClipWork], deadline: float, priority: float) -> list[str | None]:
        """Admission decision per clip: None, or why it cannot finish before ``deadline``."""
        if not self._accepting:
            return ["miner is shutting down"] * len(clips)
        return admit(self.backlog(priority), clips, deadline - time.time())

    def health(self) -> dict[str, Any]:
        """Per-worker state for ``/health``: node, GPU, state, calibrated frames/s, clips done and failed."""
        geometry = self.config.tasks[self.config.get("jobs.length_check_task")]
        workers = []
        for slot in self._slots:
            device = self._class_of(slot)
            fps = self.table_for(device).frames_per_second(device, "tiny", geometry.width, geometry.height) \
                if slot.info else None
            workers.append({
                "index": slot.index, "backend": slot.handle.backend, "state": slot.state,
                "node": slot.info.get("node"), "node_id": slot.info.get("node_id"), "gpu": slot.info.get("gpu"), "device": slot.info.get("device"),
                "device_class": slot.info.get("device_class"),
                "calibrated_fps": None if fps is None else round(fps, 3),
                "running": slot.running.spec.task_id if slot.running else None,
                "clips_done": slot.done, "clips_failed": slot.failed,
            })
        return {"backend": self.backend, "workers": len(self._slots), "workers_up": sum(s.up for s in self._slots),
                "device": self.device_class, "worker_status": workers}

    def _update_worker_gauges(self) -> None:
        """Each known worker's calibrated frames/s and the calibration factors of its device class (rewritten
        whole: a worker back on another GPU class loses its old class's series)."""
        geometry = self.config.tasks[self.config.get("jobs.length_check_task")]
        self.metrics.throughput_factor.clear()
        for slot in self._slots:
            if not slot.info:
                continue
            device, worker = self._class_of(slot), str(slot.index)
            table = self.table_for(device)
            self.metrics.worker_fps.labels(worker).set(
                table.frames_per_second(device, "tiny", geometry.width, geometry.height))
            for record in table.calibration.state() if table.calibration else ():
                self.metrics.throughput_factor.labels(worker, device, record["variant"],
                                                      f"{record['width']}x{record['height']}").set(record["factor"])

    # ----- inputs (Ray backend) ---------------------------------------------------------------
    @property
    def remote_inputs(self) -> bool:
        """Whether clips are downloaded on the workers' hosts (Ray) rather than on this one."""
        return self.backend == "ray"

    async def stage_input(self, task_id: str, url: str, name: str) -> tuple[VideoInfo, int]:
        """Have a worker that is up download and probe a clip on its own host (the one with the fewest
        downloads in flight, idle first), so that it is downloaded once: the worker that runs it uses that
        copy or pulls it from there. The clip's info and the worker's index; another worker is tried when
        one is lost meanwhile; raises :class:`InputFailed`."""
        kind, reason = ErrorKind.REFUSED, "no worker is up to download the clip (all lost or restarting)"
        tried: set[int] = set()
        for _ in range(STAGE_ATTEMPTS):
            slot = min((s for s in self._slots if s.up and s.index not in tried),
                       key=lambda s: (s.staging, s.state != IDLE, s.index), default=None)
            if slot is None:
                break
            tried.add(slot.index)
            slot.staging += 1
            try:
                return await cast(InputHolder, slot.handle).stage(task_id, url, name), slot.index
            except InputFailed:
                raise
            except Exception as exc:  # WorkerLost, or any other failure of the transport
                kind = exc.kind if isinstance(exc, WorkerLost) else ErrorKind.CRASH
                reason = f"worker {slot.index} was lost while downloading the clip: {type(exc).__name__}: {exc}"
                log.warning("worker lost while downloading a clip", extra={"fields": {
                    "task_id": task_id, "worker": slot.index, "reason": str(exc)[:500]}})
            finally:
                slot.staging -= 1
        raise InputFailed(kind, reason)

    def _with_input_source(self, spec: TaskSpec) -> TaskSpec:
        """``spec`` as a worker runs it now: when the worker that downloaded its input is not up (lost, or
        restarting: its copy is gone), the runner downloads it again instead of waiting on that worker."""
        if spec.staged_on < 0 or self._slots[spec.staged_on].up:
            return spec
        return replace(spec, staged_on=-1)

    def discard_input(self, worker: int, task_id: str, name: str) -> None:
        """Let worker ``worker`` delete the input it downloaded for ``task_id`` (the round is over)."""
        cast(InputHolder, self._slots[worker].handle).discard(task_id, name)

    # ----- running ---------------------------------------------------------------------------
    async def run(self, spec: TaskSpec, priority: float) -> TaskOutcome:
        """Queue ``spec`` and wait for its outcome (cancel the awaiting task to abandon it)."""
        if not self._accepting:
            return TaskOutcome.failed(spec.task_id, ErrorKind.SHUTDOWN, "miner is shutting down")
        job = _Job(spec, priority, asyncio.get_running_loop().create_future())
        refusal = await self._enqueue(job)
        if refusal is not None:
            return refusal
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    async def _enqueue(self, job: _Job) -> TaskOutcome | None:
        """Queue ``job``; the refusal when the queue is full (and the displaced job's outcome is set)."""
        try:
            displaced = await self._queue.put(job, job.priority)
        except QueueFull as exc:
            self.metrics.refusals.labels("queue_full").inc()
            return TaskOutcome.failed(job.spec.task_id, ErrorKind.REFUSED, str(exc))
        if displaced is not None:
            self.metrics.refusals.labels("displaced").inc()
            self._resolve(displaced, TaskOutcome.failed(
                displaced.spec.task_id, ErrorKind.REFUSED, "queue full: displaced by a higher-stake validator"))
        self.metrics.queue_depth.set(len(self._queue))
        return None

    def _abandon(self, job: _Job) -> None:
        if self._queue.remove(job):
            self.metrics.queue_depth.set(len(self._queue))
            self._resolve(job, TaskOutcome.failed(job.spec.task_id, ErrorKind.CANCELLED, "caller went away"))
            return
        for slot in self._slots:
            if slot.running is job:
                log.info("cancelling running task", extra={"fields": {"task_id": job.spec.task_id, "worker": slot.index}})
                slot.handle.cancel()

    @staticmethod
    def _resolve(job: _Job, outcome: TaskOutcome) -> None:
        if not job.future.done():
            job.future.set_result(outcome)

    async def _serve(self, slot: _Slot) -> None:
        while True:
            if not slot.up:
                await self._recovering(slot)
            job = await self._queue.get()
            if not slot.up:  # found lost while it waited: the clip goes back for a worker that is up
                if not job.future.done():
                    await self._queue.requeue(job, job.priority)
                continue
            self.metrics.queue_depth.set(len(self._queue))
            if job.future.done():
                continue
            if time.time() >= job.spec.deadline:
                self._resolve(job, TaskOutcome.failed(job.spec.task_id, ErrorKind.DEADLINE, "deadline passed while queued"))
                continue
            slot.running, slot.state, slot.started_at = job, BUSY, time.time()
            self.metrics.running.inc()
            spec = self._with_input_source(job.spec)
            try:
                outcome = await slot.handle.execute(spec)
                if outcome.error_kind == ErrorKind.OOM:
                    outcome = await self._retry_tiled(slot, spec, outcome)
            except WorkerLost as lost:
                outcome = await self._lost(slot, job, lost)
            except Exception as exc:  # a failure of the transport (Ray, the pipe): the worker is not trusted again
                outcome = await self._lost(slot, job, WorkerLost(ErrorKind.CRASH, f"{type(exc).__name__}: {exc}"))
            finally:
                slot.running = None
                self.metrics.running.dec()
                if slot.state == BUSY:
                    slot.state = IDLE
            if outcome is None:
                continue  # queued again for another worker
            slot.done += outcome.ok
            slot.failed += not outcome.ok
            self.metrics.worker_clips.labels(str(slot.index), "ok" if outcome.ok else "failed").inc()
            self._calibrate(slot, outcome)
            self._resolve(job, outcome)

    async def _lost(self, slot: _Slot, job: _Job, lost: WorkerLost) -> TaskOutcome | None:
        """A worker died or hung with ``job``: retry the clip on another worker when the deadline still
        allows (Ray backend, ``cluster.lost_clip_retries``), else its failure; the worker is recovered."""
        self._mark_down(slot, DOWN)
        self.metrics.worker_restarts.inc()
        spec = job.spec
        left = spec.deadline - time.time()
        fastest = min((w.seconds(clip_work(spec)) for w in self.capacity()), default=None)
        log.error("worker lost", extra={"fields": {"task_id": spec.task_id, "worker": slot.index,
                                                   "node": slot.info.get("node"), "reason": lost.message}})
        if job.losses >= self._lost_clip_retries or not self._accepting:
            return TaskOutcome.failed(spec.task_id, lost.kind, lost.message)
        if fastest is None or fastest > left:
            why = "no other worker is up" if fastest is None else \
                f"{fastest:.1f}s of work on the fastest worker up, {max(left, 0.0):.1f}s left"
            return TaskOutcome.failed(spec.task_id, lost.kind, f"{lost.message}; not retried: {why}")
        job.losses += 1
        log.warning("retrying a lost worker's clip on another worker", extra={"fields": {
            "task_id": spec.task_id, "lost_worker": slot.index, "seconds_left": round(left, 1)}})
        return await self._enqueue(job)

    def _calibrate(self, slot: _Slot, outcome: TaskOutcome) -> None:
        """Fold a finished clip's measured frames/s into its device class's calibration (tiled runs apart)."""
        device = self._class_of(slot)
        table, report = self.table_for(device), outcome.report
        calibration = table.calibration
        min_frames = int(self.config.get("jobs.calibration.min_frames"))
        if (calibration is None or not outcome.ok or not report or report["frames"] < min_frames
                or report["frames_per_second"] <= 0):
            return
        width, height = report["out_size"]
        variant, tiled = report["variant"], bool(report["tiled"])
        slowdown = tiled_slowdown_for(table, device, variant, width, height, report["tiles"], report["tile_width"],
                                      report["tile_height"]) if tiled else None
        table_fps = table.frames_per_second(device, variant, width, height, tiled=tiled, calibrated=False,
                                            slowdown=slowdown)
        calibration.observe(calibration_key(variant, tiled), width, height, report["frames_per_second"], table_fps)
        self._update_worker_gauges()
        store = self._stores.get(device)
        if store is not None:
            store.save(calibration)

    async def _retry_tiled(self, slot: _Slot, spec: TaskSpec, first: TaskOutcome) -> TaskOutcome:
        """After an out-of-memory: retry once on the same worker, which tiles the clip in the layout that fits
        the memory free then and predicts less than the failed attempt's, or fails it with the reason when none
        does (:class:`miner.jobs.worker.WorkerCore`)."""
        log.warning("retrying tiled after out-of-memory", extra={"fields": {
            "task_id": spec.task_id, "worker": slot.index, "first_error": first.message}})
        return await slot.handle.execute(spec.retry_tiled(first.predicted_peak_gib))
