"""Legacy synapse routes, wire-compatible with a bittensor 10.1.0 ``Dendrite``.

``miner.protocol`` validates the synapse and builds the answer with the status headers the dendrite
reads; the gate (``miner.server.gate``) has already verified the ``bt_header_*`` signature, nonce,
receiver and caller, and read the body (capped) and parsed its JSON, before a handler runs; it also
answers the synapses we do not serve (501). Failed clips are ``""`` URLs (see docs/miner.md).
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from fastapi import APIRouter, Depends, Request, Response

from miner.auth import Caller
from miner.jobs.round import Clip, RoundRejected
from miner.protocol import (
    LengthCheckProtocol, Synapse, TaskWarrantProtocol, VideoUpscalingJobProtocol, VideoUpscalingPollProtocol,
    VideoUpscalingProtocol, answer_synapse, request_timeout, synapse_from,
)
from miner.server.btauth import CLIENT_CLOSED
from miner.server.gate import gate_caller, gate_json
from miner.server.service import CallerGone, MinerService, until_disconnected

S = TypeVar("S", bound=Synapse)


def _synapse(cls: type[S]) -> Callable[[Request], S]:
    """FastAPI dependency: the route's synapse from the JSON the gate parsed (an empty body: all defaults, as a
    bittensor axon reads it); ``WireError`` (400) when it is not one."""
    def parsed(request: Request) -> S:
        return synapse_from(cls, gate_json(request, empty={}))

    return parsed


def _clips(payload: Any) -> list[Clip]:
    urls = list(payload.reference_video_urls)
    tasks = list(payload.task_types) or [payload.task_type]
    if len(tasks) == 1 and len(urls) > 1:
        tasks = tasks * len(urls)
    return [Clip(url, task) for url, task in zip(urls, tasks)]


def legacy_router(service: MinerService, default_timeout_s: float) -> APIRouter:
    """The five served synapse routes."""
    router = APIRouter()

    @router.post("/VideoUpscalingProtocol")
    async def upscale(request: Request, caller: Caller = Depends(gate_caller),
                      synapse: VideoUpscalingProtocol = Depends(_synapse(VideoUpscalingProtocol))) -> Response:
        timeout = request_timeout(request.headers) or default_timeout_s
        clips = _clips(synapse.miner_payload)
        try:
            results = await until_disconnected(request, service.upscale(
                clips, max_size_mb=synapse.miner_payload.maximum_optimized_size_mb,
                deadline=time.time() + timeout, stake=caller.stake, caller=caller.hotkey, round_id=synapse.round_id))
        except RoundRejected as exc:
            return answer_synapse(synapse, status_code=exc.status, message=exc.reason)
        except CallerGone:
            return answer_synapse(synapse, status_code=CLIENT_CLOSED, message="caller went away")
        urls = [r.url for r in results]
        synapse.miner_response.optimized_video_urls = urls
        synapse.miner_response.optimized_video_url = urls[0] if urls else ""
        if any(r.ok for r in results):
            return answer_synapse(synapse, status_code=200, message="Success")
        reasons = "; ".join(f"clip {i}: {r.error_kind}: {r.error}" for i, r in enumerate(results))
        return answer_synapse(synapse, status_code=422, message=f"every clip failed: {reasons}")

    @router.post("/LengthCheckProtocol")
    async def length(caller: Caller = Depends(gate_caller),
                     synapse: LengthCheckProtocol = Depends(_synapse(LengthCheckProtocol))) -> Response:
        synapse.max_content_length = service.max_content_length()
        return answer_synapse(synapse, status_code=200, message="Success")

    @router.post("/TaskWarrantProtocol")
    async def warrant(caller: Caller = Depends(gate_caller),
                      synapse: TaskWarrantProtocol = Depends(_synapse(TaskWarrantProtocol))) -> Response:
        synapse.warrant_task = service.warrant_task()
        return answer_synapse(synapse, status_code=200, message="Success")

    @router.post("/VideoUpscalingJobProtocol")
    async def start_job(caller: Caller = Depends(gate_caller),
                        synapse: VideoUpscalingJobProtocol = Depends(_synapse(VideoUpscalingJobProtocol))) -> Response:
        refusal = service.start_job(synapse.job_id, _clips(synapse.miner_payload),
                                    max_size_mb=synapse.miner_payload.maximum_optimized_size_mb,
                                    stake=caller.stake, caller=caller.hotkey)
        synapse.job_response.accepted = refusal is None
        return answer_synapse(synapse, status_code=200, message=refusal or "Success")

    @router.post("/VideoUpscalingPollProtocol")
    async def poll(caller: Caller = Depends(gate_caller),
                   synapse: VideoUpscalingPollProtocol = Depends(_synapse(VideoUpscalingPollProtocol))) -> Response:
        status = service.poll(synapse.job_id)
        synapse.poll_response.job_id = synapse.job_id
        synapse.poll_response.status = status.status
        synapse.poll_response.optimized_video_urls = status.urls
        synapse.poll_response.optimized_video_url = status.urls[0] if status.urls else ""
        return answer_synapse(synapse, status_code=200, message="Success")

    return router
