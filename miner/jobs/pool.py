"""What the scheduler needs of one worker, whatever runs it (a local process or a Ray actor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from miner.jobs.spec import TaskOutcome, TaskSpec

if TYPE_CHECKING:
    from upscaler.video import VideoInfo

KILL_GRACE_S = 10.0  # a worker silent this long past its task's deadline is treated as lost


class WorkerStartError(RuntimeError):
    """A worker could not load the upscaler (or did not come back after a loss)."""


class WorkerLost(Exception):
    """The worker died or hung while running a task; ``kind`` is ``ErrorKind.CRASH`` or ``DEADLINE``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class WorkerHandle(Protocol):
    """One worker as the scheduler drives it. ``start``/``restart`` return the worker's info
    (:func:`miner.jobs.worker.worker_info` plus ``node``); ``execute`` raises ``WorkerLost``; ``check``
    (an idle worker, periodically) raises ``WorkerLost`` when the worker is gone, and returns its info when
    it can have changed behind the scheduler's back (a Ray actor restarted by Ray), else None."""

    index: int
    backend: str

    async def start(self) -> dict[str, Any]: ...

    async def execute(self, spec: TaskSpec) -> TaskOutcome: ...

    async def check(self) -> dict[str, Any] | None: ...

    def cancel(self) -> None: ...

    async def restart(self) -> dict[str, Any]: ...

    async def stop(self) -> None: ...


class WorkerPool(Protocol):
    """Where the workers come from (local processes, Ray actors)."""

    async def new_workers(self) -> list[WorkerHandle]:
        """Handles of the workers not made yet: at the first call, every worker there is room for (raises
        ``WorkerStartError`` when there is none); later, those a grown cluster has room for (none for a fixed
        set)."""


class InputHolder(Protocol):
    """A worker that downloads clips on its own host (a Ray actor): the clip is downloaded once, there."""

    async def stage(self, task_id: str, url: str, name: str) -> VideoInfo:
        """Download and probe ``url`` as ``name`` of ``task_id``; raises ``InputFailed`` or ``WorkerLost``."""

    def discard(self, task_id: str, name: str) -> None:
        """Delete that download (the round is over)."""
