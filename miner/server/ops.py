"""``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from miner.jobs.scheduler import Scheduler
from miner.metrics import MinerMetrics


def ops_router(scheduler: Scheduler, metrics: MinerMetrics, *, metrics_enabled: bool) -> APIRouter:
    """Health (200 while serving, 503 while starting or shutting down) and Prometheus metrics."""
    router = APIRouter()

    @router.get("/health")
    async def health(response: Response) -> dict[str, object]:
        response.status_code = 200 if scheduler.accepting else 503
        return {
            "status": "ok" if scheduler.accepting else "unavailable",
            **scheduler.health(),
            "queue_depth": scheduler.queue_depth(),
        }

    if metrics_enabled:
        @router.get("/metrics")
        async def prometheus() -> Response:
            metrics.queue_depth.set(scheduler.queue_depth())
            return Response(metrics.render(), media_type=metrics.content_type)

    return router
