"""What the scheduler needs of one worker, whatever runs it (a local process or a Ray actor)."""

from __future__ import annotations

from typing import Any, Protocol

from miner.jobs.spec import TaskOutcome, TaskSpec

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
    (:func:`miner.jobs.worker.worker_info` plus ``node``); ``execute`` raises ``WorkerLost``."""

    index: int
    backend: str

    async def start(self) -> dict[str, Any]: ...

    async def execute(self, spec: TaskSpec) -> TaskOutcome: ...

    def cancel(self) -> None: ...

    async def restart(self) -> dict[str, Any]: ...

    async def stop(self) -> None: ...
