"""btauth/1 JSON routes: the same operations as the legacy synapse routes, for bittensor-11 validators.

Every route takes the ``Caller`` the gate proved (401/403 before any work, and before the body). Failed clips
are ``""`` in ``urls`` with their reason in ``results`` (as on the legacy route); a request where
every clip failed answers 422.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator

from miner.auth import Caller
from miner.jobs.round import Clip, ClipResult, RoundRejected
from miner.protocol.models import MAX_CLIPS, Name, Url
from miner.server.gate import gate_caller, gate_json
from miner.server.service import CallerGone, MinerService, until_disconnected

CLIENT_CLOSED = 499  # nginx's status for a client that went away; logged and counted, never read
M = TypeVar("M", bound=BaseModel)


class UpscaleBody(BaseModel):
    """A round of clips; ``task_types`` has one entry per URL, or one for all."""

    reference_video_urls: list[Url] = Field(default_factory=list, max_length=MAX_CLIPS)
    task_types: list[Name] = Field(default_factory=list, max_length=MAX_CLIPS)
    maximum_optimized_size_mb: int = Field(default=100, gt=0)
    round_id: Name | None = None
    timeout_s: float | None = Field(default=None, gt=0, description="seconds the caller waits; default server.default_timeout_s")

    @model_validator(mode="after")
    def _task_per_url(self) -> "UpscaleBody":
        if len(self.task_types) == 1 and len(self.reference_video_urls) > 1:
            self.task_types = self.task_types * len(self.reference_video_urls)
        if len(self.task_types) != len(self.reference_video_urls):
            raise ValueError("task_types must have one entry per reference_video_urls entry (or exactly one)")
        return self

    def clips(self) -> list[Clip]:
        return [Clip(url, task) for url, task in zip(self.reference_video_urls, self.task_types)]


class JobBody(UpscaleBody):
    """An organic job: the same inputs plus the validator's ``job_id``."""

    job_id: Name


def _body(model: type[M]) -> Callable[[Request], M]:
    """FastAPI dependency: ``model`` from the JSON the gate parsed; a 422 worded as FastAPI's own when it is
    not one (an empty body: not an object)."""
    def parsed(request: Request) -> M:
        try:
            return model.model_validate(gate_json(request, empty=None))
        except ValidationError as exc:
            raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                          for error in exc.errors(include_url=False)]) from None

    return parsed


def results_json(results: list[ClipResult]) -> dict[str, Any]:
    """``urls`` (``""`` for failures) and per-clip ``results``."""
    return {
        "urls": [r.url for r in results],
        "results": [{"url": r.url, "error_kind": r.error_kind, "error": r.error} for r in results],
    }


def btauth_router(service: MinerService, default_timeout_s: float) -> APIRouter:
    """``/v1/*`` routes; the gate proved the ``Caller``, read the body (capped) and parsed it before they run."""
    router = APIRouter(prefix="/v1")

    @router.post("/upscale")
    async def upscale(request: Request, caller: Caller = Depends(gate_caller),
                      body: UpscaleBody = Depends(_body(UpscaleBody))) -> JSONResponse:
        deadline = time.time() + (body.timeout_s or default_timeout_s)
        try:
            results = await until_disconnected(request, service.upscale(
                body.clips(), max_size_mb=body.maximum_optimized_size_mb, deadline=deadline, stake=caller.stake,
                caller=caller.hotkey, round_id=body.round_id))
        except RoundRejected as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        except CallerGone:
            return JSONResponse({"error": "caller went away"}, status_code=CLIENT_CLOSED)
        return JSONResponse(results_json(results), status_code=200 if any(r.ok for r in results) else 422)

    @router.post("/length")
    async def length(caller: Caller = Depends(gate_caller)) -> dict[str, int]:
        return {"max_content_length": service.max_content_length()}

    @router.post("/warrant")
    async def warrant(caller: Caller = Depends(gate_caller)) -> dict[str, int]:
        return {"warrant_task": service.warrant_task()}

    @router.post("/jobs")
    async def start_job(caller: Caller = Depends(gate_caller), body: JobBody = Depends(_body(JobBody))) -> JSONResponse:
        refusal = service.start_job(body.job_id, body.clips(), max_size_mb=body.maximum_optimized_size_mb,
                                    stake=caller.stake, caller=caller.hotkey)
        if refusal:
            return JSONResponse({"accepted": False, "error": refusal}, status_code=400)
        return JSONResponse({"accepted": True, "job_id": body.job_id}, status_code=202)

    @router.api_route("/jobs/{job_id}", methods=["GET", "POST"])
    async def poll(job_id: str, caller: Caller = Depends(gate_caller)) -> dict[str, Any]:
        status = service.poll(job_id)
        return {"job_id": job_id, "status": status.status, "urls": status.urls, "errors": status.errors}

    return router
