"""The miner's operations, independent of the transport (legacy synapse routes or btauth/1 JSON)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, TypeVar

from fastapi import Request

from miner.config import MinerConfig
from miner.jobs.organic import JobStatus, JobStore
from miner.jobs.round import Clip, ClipResult, RoundRunner
from miner.jobs.scheduler import Scheduler
from upscaler.planner import max_content_length

log = logging.getLogger(__name__)

T = TypeVar("T")
UPSCALING_TASK = 2  # Vidaio TaskType.UPSCALING
DISCONNECT_POLL_S = 0.5


class CallerGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


@dataclass
class MinerService:
    """What both transports call."""

    config: MinerConfig
    scheduler: Scheduler
    runner: RoundRunner
    jobs: JobStore

    async def upscale(self, clips: list[Clip], *, max_size_mb: int, deadline: float, stake: float, caller: str,
                      round_id: str | None) -> list[ClipResult]:
        """A synthetic round: one result per clip, in order (raises ``RoundRejected``)."""
        return await self.runner.run(clips, max_size_mb=max_size_mb, deadline=deadline, priority=stake,
                                     caller=caller, round_id=round_id)

    def max_content_length(self) -> int:
        """5 or 10: the clip length we can process 5 of inside a 135 s round on the workers up now."""
        geometry = self.config.tasks[self.config.get("jobs.length_check_task")]
        return max_content_length(geometry.width, geometry.height, self.scheduler.capacity())

    @staticmethod
    def warrant_task() -> int:
        """We warrant upscaling."""
        return UPSCALING_TASK

    def start_job(self, job_id: str, clips: list[Clip], *, max_size_mb: int, stake: float, caller: str) -> str | None:
        """Accept an organic job (None) or say why not; it runs in the background."""
        if not self.scheduler.accepting:
            return "miner is shutting down"
        deadline = time.time() + float(self.config.get("jobs.organic_timeout_s"))
        try:
            self.runner.check(clips, deadline)
        except Exception as exc:
            return str(exc)
        return self.jobs.accept(job_id, caller, lambda: self.runner.run(
            clips, max_size_mb=max_size_mb, deadline=deadline, priority=stake, caller=caller, round_id=job_id))

    def poll(self, job_id: str) -> JobStatus:
        return self.jobs.poll(job_id)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it (raising ``CallerGone``) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.warning("caller disconnected; cancelling its work", extra={"fields": {"path": request.url.path}})
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise CallerGone(request.url.path)
    finally:
        if not task.done():
            task.cancel()
