"""The Ray actor of one GPU: the same worker core as a local worker process, on any node of the cluster.

A clip's bytes never go through the miner's host. For admission, one actor downloads the clip under the
miner's ``[fetch]`` limits and probes it (:meth:`UpscaleActor.stage`); the actor that then runs it uses
that copy, pulls it from the actor that holds it (:meth:`UpscaleActor.input_chunk`, host to host, one
chunk at a time, each within ``fetch.read_timeout_s``), or, when that copy is gone (its actor lost or
restarted), downloads the URL again. It upscales with the warm model, then stores the result: straight to
S3 from its own host, or (local storage on the public host) keeps the file until the pool pulls it back in
chunks (:meth:`UpscaleActor.result_chunks`, at most two chunks in the object store at a time).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayError

from miner.config import MinerConfig
from miner.fetch import Fetcher, FetchError, FetchSettings
from miner.jobs.inputs import InputFailed, fetch_input
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.jobs.worker import WorkerConfig, WorkerCore, prepare_process, worker_info
from miner.storage import Storage, make_storage, new_key
from upscaler.video import VideoInfo

log = logging.getLogger(__name__)

CONTROL = "control"  # the concurrency group of the calls answered while a clip runs (info, cancel, results)
INPUTS = "inputs"    # the concurrency group of the inputs' downloads and transfers, also while a clip runs


@dataclass(frozen=True)
class ActorSettings:
    """What an actor needs besides the worker's own configuration (picklable)."""

    fetch: FetchSettings
    miner: MinerConfig          # for S3 storage: the actor uploads with the miner's [storage] settings
    work_dir: str
    chunk_bytes: int


def actor_device(requested: str) -> str:
    """The device of an actor: Ray makes its one GPU ``cuda:0``; the CPU where there is none (tests)."""
    if requested != "auto":
        return requested
    return "cuda:0" if torch.cuda.is_available() else "cpu"


class UpscaleActor:
    """One warm upscaler on one GPU of some node (declared with ``ray.remote`` in :mod:`ray_pool`)."""

    def __init__(self, worker: WorkerConfig, settings: ActorSettings) -> None:
        prepare_process(worker)
        self._cancel = threading.Event()
        device = actor_device(worker.device)
        self.core = WorkerCore(replace(worker, device=device), self._cancel)
        self.settings = settings
        if settings.work_dir:
            Path(settings.work_dir).expanduser().mkdir(parents=True, exist_ok=True)
        # one folder per worker index, emptied at start: a restarted actor removes what its predecessor left
        root = Path(settings.work_dir).expanduser() if settings.work_dir else Path(tempfile.gettempdir())
        self.work_dir = root / f"flashvsr-actor-{worker.index}"
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        self.storage: Storage | None = (make_storage(settings.miner)
                                        if settings.miner.get("storage.backend") == "s3" else None)
        self._results: dict[str, Path] = {}
        self._info = {**worker_info(device), "node": ray.util.get_node_ip_address(),
                      "node_id": ray.get_runtime_context().get_node_id()}

    @ray.method(concurrency_group=CONTROL)
    def info(self) -> dict[str, Any]:
        """The worker's info (device, GPU, node): answered once the model is loaded."""
        return self._info

    @ray.method(concurrency_group=CONTROL)
    def cancel(self) -> None:
        """Stop the running clip at its next chunk boundary."""
        self._cancel.set()

    @ray.method(concurrency_group=INPUTS)
    def stage(self, task_id: str, url: str, name: str) -> VideoInfo | InputFailed:
        """Download ``url`` as ``name`` of ``task_id`` and probe it (admission needs its size and frames); the
        file waits here for the clip's run, or another actor's pull, until :meth:`discard`."""
        folder = self.work_dir / task_id
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return asyncio.run(_stage(self.settings.fetch, url, folder / name))
        except InputFailed as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return exc

    @ray.method(concurrency_group=INPUTS)
    def input_chunk(self, task_id: str, name: str, offset: int) -> bytes:
        """``chunk_bytes`` of the input downloaded by :meth:`stage`, from ``offset`` (``b""`` past its end); it
        stays here until :meth:`discard` (a clip retried on a third actor pulls it again)."""
        with open(self.work_dir / task_id / name, "rb") as handle:
            handle.seek(offset)
            return handle.read(self.settings.chunk_bytes)

    @ray.method(concurrency_group=INPUTS)
    def discard(self, task_id: str, name: str) -> None:
        """Delete the input downloaded for ``task_id`` (its round is over), and its folder once empty."""
        folder = self.work_dir / task_id
        (folder / name).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:  # gone already, or a clip of it still running or keeping its result here
            pass

    def run(self, spec: TaskSpec, holder: Any = None) -> TaskOutcome:
        """Upscale ``spec``'s clip (staged here, pulled from the actor ``holder`` that staged it, or downloaded
        from ``spec.src_url``), store (S3) or keep the result for :meth:`result_chunks`."""
        self._cancel.clear()
        folder = self.work_dir / spec.task_id
        folder.mkdir(parents=True, exist_ok=True)
        local = replace(spec, src=str(folder / Path(spec.src).name), dst=str(folder / "output.mp4"))
        fetched: dict[str, float] = {}
        if not Path(local.src).exists():  # staged here, or a tiled retry after an out-of-memory: no transfer
            try:
                fetched = self._fetch(spec, Path(local.src), holder)
            except FetchError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                return TaskOutcome.failed(spec.task_id, f"download_{exc.kind}", f"on {self._info['node']}: {exc}")
        outcome = self.core.run(local)
        outcome.seconds.update(fetched)
        if not outcome.ok:
            if outcome.error_kind != ErrorKind.OOM or spec.attempt > 0:  # the download is kept for one tiled retry
                shutil.rmtree(folder, ignore_errors=True)
            return outcome
        Path(local.src).unlink(missing_ok=True)
        if self.storage is None:
            self._results[spec.task_id] = Path(local.dst)
            return outcome
        began = time.perf_counter()
        try:
            outcome.url = self.storage.put(Path(local.dst), new_key(self.settings.miner.get("storage.key_prefix")))
        except Exception as exc:
            log.exception("upload failed", extra={"fields": {"task_id": spec.task_id}})
            return TaskOutcome.failed(spec.task_id, "upload_error", f"{exc.__class__.__name__}: {exc}")
        finally:
            outcome.seconds["upload"] = time.perf_counter() - began
            shutil.rmtree(folder, ignore_errors=True)
        return outcome

    def _fetch(self, spec: TaskSpec, dest: Path, holder: Any) -> dict[str, float]:
        """Bring the clip to ``dest``: pulled from ``holder`` (the actor that downloaded it), else downloaded
        from its URL; the seconds it took, as ``input_pull`` or ``remote_download``."""
        began = time.perf_counter()
        if holder is not None:
            partial = dest.with_name(dest.name + ".part")
            try:
                with open(partial, "wb") as out:
                    while chunk := ray.get(holder.input_chunk.remote(spec.task_id, dest.name, out.tell()),
                                           timeout=self.settings.fetch.read_timeout_s):
                        out.write(chunk)
                partial.replace(dest)
                return {"input_pull": time.perf_counter() - began}
            except RayError as exc:  # that actor is gone, silent, or restarted since (its folder emptied)
                partial.unlink(missing_ok=True)
                log.warning("staged input unavailable; downloading it again", extra={"fields": {
                    "task_id": spec.task_id, "staged_on": spec.staged_on,
                    "error": str(exc).strip().split("\n", 1)[0][:300]}})
                began = time.perf_counter()
        asyncio.run(_download(self.settings.fetch, spec.src_url, dest))
        return {"remote_download": time.perf_counter() - began}

    @ray.method(concurrency_group=CONTROL, _generator_backpressure_num_objects=2)
    def result_chunks(self, task_id: str) -> Iterator[bytes]:
        """The kept result of ``task_id``, in ``chunk_bytes`` pieces; the file is deleted afterwards."""
        path = self._results.pop(task_id)
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(self.settings.chunk_bytes):
                    yield chunk
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)


async def _stage(settings: FetchSettings, url: str, dest: Path) -> VideoInfo:
    """One download and probe under the miner's limits (a module function, as :func:`_download`)."""
    async with Fetcher(settings) as fetcher:
        return await fetch_input(fetcher, url, dest)


async def _download(settings: FetchSettings, url: str, dest: Path) -> None:
    """One download under the miner's limits (a module function: an ``async`` method would make Ray run
    the whole actor on an event loop)."""
    async with Fetcher(settings) as fetcher:
        await fetcher.fetch(url, dest)
