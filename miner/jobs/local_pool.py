"""Workers as processes on the miner's host: one spawned process per device, driven over a pipe.

Messages (parent -> worker): ``("task", TaskSpec)``, ``("stop", None)``.
Messages (worker -> parent): ``("ready", info)`` once the model is loaded, ``("done", TaskOutcome)``
per task, or ``("load_failed", message)``. A cancel ``Event`` shared with the parent stops the
running task at the next chunk boundary.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from multiprocessing.synchronize import Event
from typing import Any

from miner.jobs.pool import KILL_GRACE_S, WorkerLost, WorkerStartError
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.jobs.worker import WorkerConfig, WorkerCore, prepare_process, worker_info

EXIT_WAIT_S = 2.0  # how long a worker whose pipe closed may take to exit before it counts as hung


def worker_main(config: WorkerConfig, conn: Connection, cancel: Event) -> None:
    """Process entry point (spawn start method)."""
    prepare_process(config)
    try:
        core = WorkerCore(config, cancel)
    except Exception as exc:  # reported to the parent, which logs it and gives up on this device
        conn.send(("load_failed", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))
        return
    conn.send(("ready", worker_info(config.device)))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        conn.send(("done", core.run(payload)))


class LocalPool:
    """The worker processes of this host (``WorkerPool``): one per configured worker, made once."""

    def __init__(self, configs: list[WorkerConfig], start_timeout_s: float) -> None:
        self._configs = configs
        self.start_timeout_s = start_timeout_s
        self._made = 0

    async def new_workers(self) -> list["ProcessWorker"]:
        workers = [ProcessWorker(config, self.start_timeout_s) for config in self._configs[self._made:]]
        self._made = len(self._configs)
        return workers


class ProcessWorker:
    """A spawned worker process on this host (``WorkerHandle``)."""

    backend = "local"

    def __init__(self, config: WorkerConfig, start_timeout_s: float) -> None:
        self.index = config.index
        self.config = config
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{self.index}-wait")
        self._process: Any = None
        self._conn: Connection | None = None
        self._cancel: Event | None = None

    async def start(self) -> dict[str, Any]:
        parent, child = self._ctx.Pipe()
        self._cancel = self._ctx.Event()
        self._process = self._ctx.Process(target=worker_main, args=(self.config, child, self._cancel),
                                          name=f"flashvsr-worker-{self.index}", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        reply = await self._receive(self.start_timeout_s)
        if reply is None or reply[0] != "ready":
            await asyncio.to_thread(self._terminate)
            detail = reply[1] if reply else "exited or timed out before loading"
            raise WorkerStartError(f"worker {self.index} on {self.config.device} failed to start: {detail}")
        return {**reply[1], "node": reply[1]["host"]}

    async def execute(self, spec: TaskSpec) -> TaskOutcome:
        assert self._conn is not None and self._cancel is not None, "execute() before start()"
        self._cancel.clear()
        try:
            self._conn.send(("task", spec))
        except OSError as exc:  # the worker died while idle
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} is gone: {exc}") from None
        reply = await self._receive(max(spec.deadline - time.time(), 0.0) + KILL_GRACE_S)
        if reply is not None and reply[0] == "done":
            return reply[1]
        # a closed pipe can be seen before the exiting process can be reaped: give it a moment to finish
        await asyncio.get_running_loop().run_in_executor(self._thread, self._process.join, EXIT_WAIT_S)
        if not self._process.is_alive():
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} exited with code {self._process.exitcode}")
        raise WorkerLost(ErrorKind.DEADLINE, f"worker {self.index} did not stop {KILL_GRACE_S:.0f}s after the deadline")

    async def check(self) -> None:
        """Raise ``WorkerLost`` when the process has exited (an idle worker killed, e.g. by the OOM killer)."""
        if self._process is None or not self._process.is_alive():
            code = None if self._process is None else self._process.exitcode
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} exited with code {code}")

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    async def restart(self) -> dict[str, Any]:
        await asyncio.to_thread(self._terminate)
        return await self.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._terminate)
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _receive(self, timeout: float) -> tuple[str, Any] | None:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, _receive, self._conn, self._process.sentinel, timeout)

    def _terminate(self) -> None:
        if self._process is None:
            return
        if self._process.is_alive() and self._conn is not None:
            try:
                self._conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()


def _receive(conn: Connection, sentinel: int, timeout: float) -> tuple[str, Any] | None:
    """Blocking: the next message from a worker, or None if it died or ``timeout`` passed."""
    ready = wait([conn, sentinel], timeout=timeout)
    if conn in ready:
        try:
            return conn.recv()
        except (EOFError, OSError):
            return None
    return None
