"""One request's clips, end to end: download all, probe, admit, upscale on the workers, store.

Failed clips do not fail the round: each clip's result is a URL, or ``""`` with the reason (the
Vidaio validator treats an empty URL as that clip's failure and scores the others).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from miner.config import MinerConfig
from miner.fetch import Fetcher
from miner.jobs.inputs import INPUT_NAME, InputFailed, fetch_input
from miner.jobs.scheduler import Scheduler
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.metrics import MinerMetrics
from miner.storage import Storage, new_key
from upscaler.planner import ClipWork, longest_first

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class RoundRejected(Exception):
    """The whole request is refused before any work; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Clip:
    """One input of a request."""

    url: str
    task_type: str


@dataclass
class ClipResult:
    """One output: ``url`` is ``""`` when the clip failed, with ``error_kind``/``error`` saying why."""

    url: str = ""
    error_kind: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.url)


@dataclass
class _ClipState:
    index: int
    clip: Clip
    task_id: str
    folder: Path
    result: ClipResult
    frames: int = 0
    staged_on: int = -1          # the worker holding the downloaded input (Ray backend); -1: this host
    est_seconds: float = 0.0
    variant: str = ""
    tile_size: int = 0
    target: tuple[int, int] = (0, 0)
    seconds: dict[str, float] | None = None
    outcome: TaskOutcome | None = None


class RoundRunner:
    """Runs requests of N clips against the scheduler, the fetcher and the storage."""

    def __init__(self, config: MinerConfig, scheduler: Scheduler, fetcher: Fetcher, storage: Storage,
                 metrics: MinerMetrics, work_dir: Path) -> None:
        self.config = config
        self.scheduler = scheduler
        self.fetcher = fetcher
        self.storage = storage
        self.metrics = metrics
        self.work_dir = work_dir
        self._downloads = asyncio.Semaphore(int(config.get("jobs.download_concurrency")))

    def check(self, clips: list[Clip], deadline: float) -> None:
        """Request-level validation; raises ``RoundRejected`` (400 bad input, 503 cannot serve now)."""
        if not clips:
            raise RoundRejected(400, "no reference video URLs in the request")
        unknown = sorted({c.task_type for c in clips if c.task_type not in self.config.tasks})
        if unknown:
            raise RoundRejected(400, f"unknown task type(s) {', '.join(unknown)}; served: {', '.join(self.config.tasks)}")
        if not self.scheduler.accepting:
            raise RoundRejected(503, "miner is shutting down")
        left = deadline - time.time() - float(self.config.get("jobs.deadline_margin_s"))
        if left <= 0:
            raise RoundRejected(503, f"the caller's timeout leaves no time to work ({left:.1f}s)")

    async def run(self, clips: list[Clip], *, max_size_mb: int, deadline: float, priority: float,
                  caller: str, round_id: str | None = None) -> list[ClipResult]:
        """Process every clip; results in input order. Cancelling this task abandons the remaining work."""
        self.check(clips, deadline)
        work_deadline = deadline - float(self.config.get("jobs.deadline_margin_s"))
        states = [
            _ClipState(i, clip, uuid.uuid4().hex[:12], self.work_dir / uuid.uuid4().hex, ClipResult())
            for i, clip in enumerate(clips)
        ]
        try:
            await asyncio.gather(*(self._download(s) for s in states))
            ready = [s for s in states if not s.result.error_kind]
            self._admit(ready, work_deadline, priority)
            ready = sorted((s for s in ready if not s.result.error_kind), key=lambda s: -self._work(s).size)
            # queued longest first, as admission and the LengthCheck price the round
            await asyncio.gather(*(self._process(s, max_size_mb * MIB, work_deadline, priority) for s in ready))
        finally:
            for state in states:
                shutil.rmtree(state.folder, ignore_errors=True)
                if state.staged_on >= 0:
                    self.scheduler.discard_input(state.staged_on, state.task_id, INPUT_NAME)
                self._log_task(state, caller, round_id)
        return [s.result for s in states]

    def _fail(self, state: _ClipState, kind: str, message: str) -> None:
        state.result = ClipResult("", kind, message)

    async def _download(self, state: _ClipState) -> None:
        state.folder.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        try:
            async with self._downloads:
                if self.scheduler.remote_inputs:  # downloaded once, on a GPU host, where it will run
                    info, state.staged_on = await self.scheduler.stage_input(state.task_id, state.clip.url, INPUT_NAME)
                else:
                    info = await fetch_input(self.fetcher, state.clip.url, state.folder / INPUT_NAME)
            state.frames = info.frames
            state.target = self.config.tasks[state.clip.task_type].target_for(info.width, info.height)
            plan = self.scheduler.plan(*state.target, info.frames, None)
            state.est_seconds, state.variant, state.tile_size = plan.est_seconds, plan.variant, plan.tile_size
        except InputFailed as exc:
            self._fail(state, exc.kind, exc.message)
        finally:
            state.seconds = {"download": time.perf_counter() - began}

    @staticmethod
    def _work(state: _ClipState) -> ClipWork:
        return ClipWork(*state.target, state.frames, state.variant, state.tile_size > 0)

    def _admit(self, states: list[_ClipState], deadline: float, priority: float) -> None:
        order = longest_first([self._work(s) for s in states])
        states = [states[i] for i in order]
        decisions = self.scheduler.admit([self._work(s) for s in states], deadline, priority)
        for state, refusal in zip(states, decisions):
            if refusal:
                self.metrics.refusals.labels("deadline").inc()
                self._fail(state, ErrorKind.REFUSED, refusal)

    async def _process(self, state: _ClipState, max_bytes: int, deadline: float, priority: float) -> None:
        width, height = state.target
        spec = TaskSpec(
            task_id=state.task_id, task_type=state.clip.task_type, src=str(state.folder / INPUT_NAME),
            dst=str(state.folder / "output.mp4"), width=width, height=height,
            frames=state.frames, variant=state.variant, tile_size=state.tile_size, max_bytes=max_bytes,
            deadline=deadline, crf=int(self.config.get("upscaler.crf")),
            codec=str(self.config.get("upscaler.codec")), preset=str(self.config.get("upscaler.preset")),
            est_seconds=state.est_seconds, src_url=state.clip.url, staged_on=state.staged_on,
        )
        outcome = await self.scheduler.run(spec, priority)
        state.seconds.update(outcome.seconds)
        state.outcome = outcome
        if not outcome.ok:
            self._fail(state, outcome.error_kind or ErrorKind.ERROR, outcome.message)
            return
        if outcome.url:  # a remote worker stored it (S3, straight from its host)
            state.result = ClipResult(outcome.url)
            return
        began = time.perf_counter()
        try:
            url = await asyncio.to_thread(self.storage.put, Path(spec.dst), new_key(self.config.get("storage.key_prefix")))
        except Exception as exc:
            log.exception("upload failed", extra={"fields": {"task_id": state.task_id}})
            self._fail(state, "upload_error", f"{exc.__class__.__name__}: {exc}")
            return
        finally:
            state.seconds["upload"] = time.perf_counter() - began
        state.result = ClipResult(url)

    def _log_task(self, state: _ClipState, caller: str, round_id: str | None) -> None:
        """The one line per task operators read, and the task metrics."""
        outcome = state.outcome
        report = (outcome.report if outcome else None) or {}
        result = "ok" if state.result.ok else (state.result.error_kind or "error")
        seconds = state.seconds or {}
        fields = {
            "task_id": state.task_id, "round_id": round_id, "caller": caller, "task_type": state.clip.task_type,
            "index": state.index, "result": result, "frames": report.get("frames", state.frames),
            "variant": report.get("variant", state.variant), "tiled": report.get("tiled", bool(state.tile_size)),
            "attempts": outcome.attempts if outcome else 0,
            "est_s": round(state.est_seconds, 2),
            **{f"{stage}_s": round(value, 3) for stage, value in seconds.items()},
            "fps": report.get("frames_per_second", 0.0), "peak_vram_gib": report.get("peak_vram_gib", 0.0),
            "out_mb": round(outcome.out_bytes / MIB, 2) if outcome else 0.0,
        }
        if state.result.error:
            fields["error"] = state.result.error
        log.log(logging.INFO if state.result.ok else logging.WARNING, "task", extra={"fields": fields})
        self.metrics.tasks.labels(state.clip.task_type, result).inc()
        for stage, value in seconds.items():
            self.metrics.stage_seconds.labels(stage).observe(value)
        if state.result.ok:
            self.metrics.frames.inc(report.get("frames", 0))
            self.metrics.frames_per_second.labels(report.get("variant", "")).observe(report.get("frames_per_second", 0.0))
