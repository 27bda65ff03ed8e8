"""Organic jobs (job/poll flow): accept now, run in the background, answer polls until the TTL."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from miner.jobs.round import ClipResult

log = logging.getLogger(__name__)

PROCESSING, COMPLETED, FAILED = "processing", "completed", "failed"


@dataclass
class JobStatus:
    """What a poll answers: ``urls`` has one entry per input (``""`` for failed clips) once completed."""

    status: str
    urls: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)


@dataclass
class _Job:
    task: asyncio.Task[list[ClipResult]]
    created: float
    caller: str


class JobStore:
    """Background jobs by id; finished ones are forgotten ``ttl_s`` after they were accepted."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._jobs: dict[str, _Job] = {}

    def accept(self, job_id: str, caller: str, work: Callable[[], Awaitable[list[ClipResult]]]) -> str | None:
        """Start ``work`` under ``job_id``; returns None, or why the job is not accepted."""
        self.prune()
        if not job_id:
            return "empty job_id"
        if job_id in self._jobs:
            return f"job {job_id} already exists"
        task = asyncio.create_task(work(), name=f"job-{job_id}")
        self._jobs[job_id] = _Job(task, time.time(), caller)
        log.info("job accepted", extra={"fields": {"job_id": job_id, "caller": caller}})
        return None

    def poll(self, job_id: str) -> JobStatus:
        """Status of ``job_id``; unknown or expired ids read as failed (as the reference miner answers)."""
        job = self._jobs.get(job_id)
        if job is None:
            return JobStatus(FAILED, errors=["unknown job_id"])
        if not job.task.done():
            return JobStatus(PROCESSING)
        if job.task.cancelled() or job.task.exception() is not None:
            reason = "cancelled" if job.task.cancelled() else repr(job.task.exception())
            return JobStatus(FAILED, errors=[reason])
        results = job.task.result()
        status = COMPLETED if any(r.ok for r in results) else FAILED
        return JobStatus(status, [r.url for r in results], [r.error for r in results])

    def prune(self) -> None:
        """Forget finished jobs older than the TTL."""
        cutoff = time.time() - self.ttl_s
        for job_id in [j for j, job in self._jobs.items() if job.task.done() and job.created < cutoff]:
            del self._jobs[job_id]

    async def close(self) -> None:
        """Cancel jobs still running (shutdown)."""
        running = [job.task for job in self._jobs.values() if not job.task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
