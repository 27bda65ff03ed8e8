"""The miner's FastAPI application: routes, and the lifespan that starts and stops everything.

``create_app(config, auth)`` builds it; ``auth`` supplies the two-step authenticators of both
transports (legacy bittensor-10 synapses and btauth/1), run by the gate (``miner.server.gate``) in
front of every route, before a byte of a body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request, Response

from miner.auth import BtAuth, LegacyAuth
from miner.config import MinerConfig
from miner.fetch import Fetcher, FetchSettings
from miner.jobs.organic import JobStore
from miner.jobs.round import RoundRunner
from miner.jobs.pool import WorkerStartError
from miner.jobs.scheduler import Scheduler
from miner.metrics import MinerMetrics
from miner.protocol import WireError, legacy_response
from miner.server.btauth import btauth_router
from miner.server.files import files_router
from miner.server.gate import Gate, source_guard
from miner.server.legacy import legacy_router
from miner.server.limits import OpsAccess, ServerLimits
from miner.server.ops import ops_router
from miner.server.service import MinerService
from miner.storage import LocalStorage, Storage, make_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Authenticators:
    """The two-step authentication of each transport (``begin`` from headers, ``complete`` with the body)."""

    legacy: LegacyAuth
    btauth: BtAuth


def create_app(config: MinerConfig, auth: Authenticators, *, storage: Storage | None = None) -> FastAPI:
    """The app; workers start in its lifespan (``uvicorn`` runs it), and stop gracefully on shutdown.
    ``app.state`` holds ``limits``, ``metrics`` and ``sources`` (the per-IP block list) for ``uvicorn_options``."""
    metrics = MinerMetrics()
    scheduler = Scheduler(config, metrics)
    storage = storage or make_storage(config)
    fetcher = Fetcher(FetchSettings.from_table(config.section("fetch")))
    work_root = config.get("jobs.work_dir")
    scratch = tempfile.TemporaryDirectory(prefix="flashvsr-miner-") if not work_root else None
    work_dir = Path(scratch.name if scratch else work_root).expanduser()
    work_dir.mkdir(parents=True, exist_ok=True)
    runner = RoundRunner(config, scheduler, fetcher, storage, metrics, work_dir)
    service = MinerService(config, scheduler, runner, JobStore(float(config.get("jobs.result_ttl_s"))))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("miner starting", extra={"fields": {"config": config.source, "storage": storage.name,
                                                     "public_url": config.public_url}})
        async with fetcher:
            try:
                await scheduler.start()
            except WorkerStartError as exc:
                server = getattr(app.state, "server", None)
                if server is None:
                    raise
                # no worker came up: end the server, and serve() ends the process with this one line
                log.error("no worker started", extra={"fields": {"reason": str(exc)}})
                app.state.start_error, server.should_exit = str(exc), True
                yield
                return
            cleaner = asyncio.create_task(_cleanup_loop(storage, float(config.get("storage.cleanup_interval_s"))))
            log.info("miner serving", extra={"fields": {"workers": scheduler.workers, "device": scheduler.device_class}})
            try:
                yield
            finally:
                log.info("miner stopping", extra={"fields": {"grace_s": config.get("server.shutdown_grace_s")}})
                await scheduler.stop(float(config.get("server.shutdown_grace_s")))
                await service.jobs.close()
                cleaner.cancel()
                await asyncio.gather(cleaner, return_exceptions=True)
                if scratch is not None:
                    scratch.cleanup()
                log.info("miner stopped")

    app = FastAPI(title="flashvsr-miner", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics

    app.add_exception_handler(WireError, _bad_synapse)
    app.add_middleware(_RequestCounter, metrics=metrics)
    limits = ServerLimits.from_config(config)
    app.state.limits = limits
    app.state.sources = source_guard(limits, metrics)
    app.add_middleware(Gate, legacy=auth.legacy, btauth=auth.btauth, limits=limits, ops=OpsAccess.from_config(config),
                       metrics=metrics, sources=app.state.sources,
                       files_check=storage.verify if isinstance(storage, LocalStorage) else None)
    app.include_router(ops_router(scheduler, metrics, metrics_enabled=bool(config.get("metrics.enabled"))))
    app.include_router(legacy_router(service, float(config.get("server.default_timeout_s"))))
    app.include_router(btauth_router(service, float(config.get("server.default_timeout_s"))))
    if isinstance(storage, LocalStorage):
        app.include_router(files_router())
    return app


async def _bad_synapse(request: Request, exc: Exception) -> Response:
    """A synapse body that does not parse: 400 in the dendrite's wire format (never a 500)."""
    assert isinstance(exc, WireError)
    body, headers = legacy_response(None, exc.status, exc.message)
    return Response(body, status_code=exc.status, headers=headers)


class _RequestCounter:
    """Pure ASGI middleware counting answers by route and status (keeps disconnect detection intact)."""

    def __init__(self, app: Any, metrics: MinerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")  # the template: bounded label values
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


async def _cleanup_loop(storage: Storage, interval_s: float) -> None:
    """Delete expired results every ``interval_s``."""
    while True:
        try:
            deleted = await asyncio.to_thread(storage.delete_expired)
            if deleted:
                log.info("deleted expired results", extra={"fields": {"count": deleted, "storage": storage.name}})
        except Exception:
            log.exception("result cleanup failed")
        await asyncio.sleep(interval_s)
