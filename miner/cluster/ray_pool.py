"""The Ray worker pool: one :class:`~miner.cluster.actor.UpscaleActor` per GPU of an existing Ray
cluster, driven from the miner process like local worker processes (``WorkerHandle``).

A dead actor (its process crashed, or its node went away) is restarted by Ray (``cluster.max_restarts``)
on any node with room; the scheduler retries its clip on another actor when the deadline allows, finds
idle actors that died by checking them (``jobs.worker_check_s``), and asks :class:`RayPool` for actors
for the GPU hosts that joined since.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import ray
from ray.exceptions import ActorDiedError, RayActorError

from miner.cluster.actor import CONTROL, INPUTS, ActorSettings, UpscaleActor
from miner.config import MinerConfig
from miner.fetch import FetchSettings
from miner.jobs.inputs import InputFailed
from miner.jobs.pool import KILL_GRACE_S, WorkerLost, WorkerStartError
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.jobs.worker import WorkerConfig
from upscaler.video import VideoInfo

log = logging.getLogger(__name__)

CONTROL_CALLS = 4  # info, cancel and result chunks answered at once while a clip runs
INPUT_TRANSFERS = 2  # besides the downloads: another actor pulling a staged input, a discard
CHECK_TIMEOUT_S = 10.0  # an idle actor that does not answer its periodic check this fast counts as lost


def connect(cluster: dict[str, Any]) -> None:
    """Join the Ray cluster at ``cluster.address`` as a driver (once per process)."""
    if ray.is_initialized():
        return
    ray.init(address=cluster["address"], namespace=cluster["namespace"], log_to_driver=True,
             configure_logging=False)
    log.info("joined the Ray cluster", extra={"fields": {"address": cluster["address"],
                                                         "resources": ray.cluster_resources()}})


def remote_actor(download_concurrency: int) -> Any:
    """The actor class, its inputs group sized so that every download the miner lets run at once
    (``jobs.download_concurrency``, all actors together) can land on one actor, with room for transfers."""
    return ray.remote(concurrency_groups={CONTROL: CONTROL_CALLS,
                                          INPUTS: download_concurrency + INPUT_TRANSFERS})(UpscaleActor)


def actor_count(cluster: dict[str, Any], totals: dict[str, float]) -> int:
    """How many actors the cluster's resources hold (``jobs.workers = "auto"``): the least, over the
    resources one actor needs, of the cluster's total divided by the actor's share."""
    needs = {**({"GPU": float(cluster["num_gpus"])} if cluster["num_gpus"] else {}),
             **{k: float(v) for k, v in cluster["resources"].items()}}
    if not needs:
        raise ValueError("cluster: jobs.workers = 'auto' needs cluster.num_gpus or cluster.resources to count actors")
    return int(min(totals.get(name, 0.0) // amount for name, amount in needs.items()))


class RayPool:
    """The actors of a Ray cluster (``WorkerPool``): ``jobs.workers`` of them, or with "auto" as many as the
    cluster's resources hold, counted again on each call so that a GPU host joining later gets actors."""

    def __init__(self, config: MinerConfig, worker_config: Callable[[int, str], WorkerConfig],
                 start_timeout_s: float) -> None:
        self.cluster = config.section("cluster")
        self.workers = config.get("jobs.workers")
        self.worker_config = worker_config
        self.start_timeout_s = start_timeout_s
        self.settings = ActorSettings(fetch=FetchSettings.from_table(config.section("fetch")), miner=config,
                                      work_dir=str(self.cluster["work_dir"]),
                                      chunk_bytes=int(self.cluster["result_chunk_bytes"]))
        self.actor_class = remote_actor(int(config.get("jobs.download_concurrency")))
        self.handles: list[RayWorker] = []

    async def new_workers(self) -> list["RayWorker"]:
        """Join the cluster (first call) and make a handle per actor there is room for beyond those made."""
        first = not self.handles
        try:
            await asyncio.to_thread(connect, self.cluster)
            count = (actor_count(self.cluster, await asyncio.to_thread(ray.cluster_resources))
                     if self.workers == "auto" else int(self.workers))
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ... for an unreachable cluster
            if not first:
                raise
            raise WorkerStartError(f"cannot join the Ray cluster at {self.cluster['address']}: {exc}; start its head "
                                   "with `ray start --head` (docs/cluster.md) or set cluster.address") from None
        if first and count < 1:
            raise WorkerStartError(f"the Ray cluster at {self.cluster['address']} has no room for an actor (each "
                                   f"needs num_gpus={self.cluster['num_gpus']}, resources={self.cluster['resources']}); "
                                   f"join a GPU host with `ray start --address <head>:6379`")
        new = [RayWorker(self.worker_config(i, "auto"), self.actor_class, self.settings, self.cluster,
                         self.start_timeout_s, self.handles) for i in range(len(self.handles), count)]
        if new and not first:
            log.info("the Ray cluster has room for more actors", extra={"fields": {
                "actors": len(self.handles), "room_for": count}})
        self.handles.extend(new)
        return new


class RayWorker:
    """One actor (``WorkerHandle``, ``InputHolder``): created on start, restarted by Ray after a loss;
    ``peers`` are the pool's workers by index (where a clip staged on another actor is pulled from)."""

    backend = "ray"

    def __init__(self, config: WorkerConfig, actor_class: Any, settings: ActorSettings, cluster: dict[str, Any],
                 start_timeout_s: float, peers: list["RayWorker"]) -> None:
        self.index = config.index
        self.config = config
        self.actor_class = actor_class
        self.settings = settings
        self.cluster = cluster
        self.start_timeout_s = start_timeout_s
        self.peers = peers
        self._actor: Any = None
        self._node = "?"

    def _create(self) -> None:
        self._actor = self.actor_class.options(
            name=f"flashvsr-worker-{self.index}-{os.getpid()}", num_gpus=float(self.cluster["num_gpus"]),
            num_cpus=float(self.cluster["num_cpus"]), resources=dict(self.cluster["resources"]),
            max_restarts=int(self.cluster["max_restarts"]), max_task_retries=0,
        ).remote(self.config, self.settings)

    async def _ready(self) -> dict[str, Any]:
        try:
            info = await asyncio.wait_for(_awaitable(self._actor.info.remote()), self.start_timeout_s)
        except asyncio.TimeoutError:
            raise WorkerStartError(
                f"actor {self.index} not ready after {self.start_timeout_s:.0f}s: no node with a free "
                f"num_gpus={self.cluster['num_gpus']} resources={self.cluster['resources']}, or the model is "
                f"still loading (see `ray status` and the actor's log)") from None
        self._node = str(info["node"])
        return info

    async def start(self) -> dict[str, Any]:
        if self._actor is None:
            self._create()
        try:
            return await self._ready()
        except ActorDiedError as exc:  # dead for good (failed to load, or max_restarts reached)
            self._actor = None
            raise WorkerStartError(f"actor {self.index} died: {_first_line(exc)}; a new one is created on "
                                   f"the next attempt") from None
        except RayActorError as exc:  # restarting: Ray brings it back where there is room
            raise WorkerStartError(f"actor {self.index} unavailable: {_first_line(exc)}") from None

    async def check(self) -> dict[str, Any]:
        """The actor's info (a new pid or node: Ray restarted it); ``WorkerLost`` when it is unavailable (dead,
        restarting, its node gone) or silent for :data:`CHECK_TIMEOUT_S`."""
        if self._actor is None:
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} has no actor")
        try:
            info: dict[str, Any] = await asyncio.wait_for(_awaitable(self._actor.info.remote()), CHECK_TIMEOUT_S)
        except RayActorError as exc:
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} (Ray actor on {self._node}) is unavailable: "
                                              f"{_first_line(exc)}") from None
        except asyncio.TimeoutError:
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} (Ray actor on {self._node}) did not answer a "
                                              f"check in {CHECK_TIMEOUT_S:.0f}s") from None
        self._node = str(info["node"])
        return info

    async def restart(self) -> dict[str, Any]:
        """Wait for the actor Ray restarts (or a new one, when Ray gave up on it)."""
        return await self.start()

    async def stage(self, task_id: str, url: str, name: str) -> VideoInfo:
        """Have the actor download and probe the clip on its host (``InputHolder``); bounded as on this host,
        by the ``[fetch]`` timeouts, and by Ray's failure detection for the actor and its node."""
        try:
            result = await self._actor.stage.remote(task_id, url, name)
        except RayActorError as exc:
            raise WorkerLost(ErrorKind.CRASH, f"Ray actor on {self._node} died: {_first_line(exc)}") from None
        if isinstance(result, InputFailed):
            raise result
        return result

    def discard(self, task_id: str, name: str) -> None:
        if self._actor is not None:
            self._actor.discard.remote(task_id, name)

    async def execute(self, spec: TaskSpec) -> TaskOutcome:
        timeout = max(spec.deadline - time.time(), 0.0) + KILL_GRACE_S
        holder = self.peers[spec.staged_on]._actor if spec.staged_on not in (-1, self.index) else None
        try:
            outcome: TaskOutcome = await asyncio.wait_for(_awaitable(self._actor.run.remote(spec, holder)), timeout)
            if outcome.ok and not outcome.url:
                began = time.perf_counter()
                await self._pull(spec.task_id, Path(spec.dst), spec.deadline)
                outcome.seconds["transfer"] = time.perf_counter() - began
            return outcome
        except RayActorError as exc:
            raise WorkerLost(ErrorKind.CRASH, f"worker {self.index} (Ray actor on {self._node}) died: "
                                              f"{_first_line(exc)}") from None
        except asyncio.TimeoutError:
            ray.kill(self._actor, no_restart=False)  # Ray starts it again
            raise WorkerLost(ErrorKind.DEADLINE, f"worker {self.index} (Ray actor on {self._node}) did not stop "
                                                 f"{KILL_GRACE_S:.0f}s after the deadline; restarted") from None

    async def _pull(self, task_id: str, dst: Path, deadline: float) -> None:
        """Stream the kept result into ``dst`` (a ``.part`` file renamed when complete), each chunk within
        ``fetch.read_timeout_s`` (as input pulls) and the whole by the clip's deadline; ``WorkerLost`` else."""
        partial = dst.with_name(dst.name + ".part")
        where = f"worker {self.index} (Ray actor on {self._node})"
        try:
            with open(partial, "wb") as out:
                await asyncio.wait_for(
                    write_chunks(self._actor.result_chunks.remote(task_id), out, self.settings.fetch.read_timeout_s),
                    max(deadline - time.time(), 0.0) + KILL_GRACE_S)
            partial.replace(dst)
        except TransferStalled as exc:
            raise WorkerLost(ErrorKind.CRASH, f"{where}: the result transfer stalled ({exc})") from None
        except asyncio.TimeoutError:
            raise WorkerLost(ErrorKind.DEADLINE, f"{where}: the result transfer was still running "
                                                 f"{KILL_GRACE_S:.0f}s after the deadline") from None
        finally:
            partial.unlink(missing_ok=True)

    def cancel(self) -> None:
        if self._actor is not None:
            self._actor.cancel.remote()

    async def stop(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor, no_restart=True)
            self._actor = None


class TransferStalled(Exception):
    """No chunk of a result came within the per-chunk timeout."""


async def write_chunks(chunks: AsyncIterator[Awaitable[bytes]], out: BinaryIO, chunk_timeout_s: float) -> int:
    """Write each chunk of ``chunks`` (a Ray generator's refs) to ``out``; bytes written. Raises
    :class:`TransferStalled` when the next chunk takes longer than ``chunk_timeout_s``."""
    written = 0
    refs = aiter(chunks)
    while True:
        try:
            ref = await asyncio.wait_for(anext(refs), chunk_timeout_s)
            chunk = await asyncio.wait_for(_awaitable(ref), chunk_timeout_s)
        except StopAsyncIteration:
            return written
        except asyncio.TimeoutError:
            raise TransferStalled(f"no chunk after {written} bytes for {chunk_timeout_s:g}s") from None
        out.write(chunk)
        written += len(chunk)


async def _awaitable(ref: Any) -> Any:
    """An ``ObjectRef`` as a coroutine (``asyncio.wait_for`` wants one)."""
    return await ref


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
