"""The legacy transport: bittensor-10 synapses, built, signed and parsed by ``miner.protocol``'s client side
exactly as a bittensor 10.1.0 ``Dendrite`` does (one dendrite uuid per client, a fresh nonce per call)."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import bittensor as bt

from miner.mock_validator.client import Answer, RoundAnswer, send
from miner.protocol import (
    LengthCheckProtocol, TaskWarrantProtocol, UpscalingMinerPayload, VideoUpscalingJobProtocol,
    VideoUpscalingPollProtocol, VideoUpscalingProtocol, build_legacy_request, new_dendrite_uuid,
    parse_legacy_response,
)
from miner.protocol.models import Synapse

S = TypeVar("S", bound=Synapse)


class LegacyClient:
    """The synapse routes of the miner (``POST /<SynapseName>``)."""

    transport = "legacy"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, wallet: bt.Wallet, miner_hotkey: str) -> None:
        self.session, self.base_url, self.wallet, self.miner_hotkey = session, base_url.rstrip("/"), wallet, miner_hotkey
        parts = urlsplit(self.base_url)
        self.axon_ip, self.axon_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.dendrite_uuid = new_dendrite_uuid()

    async def _call(self, synapse: S, timeout: float) -> tuple[S | None, Answer]:
        """The parsed synapse (None after a timeout or connection error) and the raw answer."""
        req = build_legacy_request(synapse, self.wallet.hotkey, self.miner_hotkey, self.axon_ip, self.axon_port,
                                   timeout, dendrite_uuid=self.dendrite_uuid)
        answer = await send(self.session, self.base_url + req.path, req.body, req.headers, timeout)
        if not answer.raw and not answer.headers:
            return None, answer
        parsed = parse_legacy_response(req.synapse, answer.status, answer.headers, answer.raw)
        if parsed.dendrite is not None and parsed.dendrite.status_message:
            answer.message = parsed.dendrite.status_message
        return parsed, answer

    @staticmethod
    def _payload(urls: list[str], task: str, max_size_mb: int) -> UpscalingMinerPayload:
        return UpscalingMinerPayload(reference_video_urls=urls, task_types=[task] * len(urls),
                                     maximum_optimized_size_mb=max_size_mb)

    async def warrant(self, timeout: float) -> tuple[int | None, Answer]:
        parsed, answer = await self._call(TaskWarrantProtocol(), timeout)
        value: Any = parsed.warrant_task if parsed is not None and answer.status == 200 else None
        return (int(value) if value is not None else None), answer

    async def length(self, timeout: float) -> tuple[int | None, Answer]:
        parsed, answer = await self._call(LengthCheckProtocol(), timeout)
        return (int(parsed.max_content_length) if parsed is not None and answer.status == 200 else None), answer

    async def upscale(self, urls: list[str], task: str, *, max_size_mb: int, round_id: str, timeout: float) -> RoundAnswer:
        synapse = VideoUpscalingProtocol(round_id=round_id, miner_payload=self._payload(urls, task, max_size_mb))
        parsed, answer = await self._call(synapse, timeout)
        result_urls = list(parsed.miner_response.optimized_video_urls) if parsed is not None and answer.status == 200 else []
        return RoundAnswer(answer.status, result_urls, answer.message, answer.seconds)

    async def start_job(self, job_id: str, urls: list[str], task: str, *, max_size_mb: int,
                        timeout: float) -> tuple[bool, Answer]:
        synapse = VideoUpscalingJobProtocol(job_id=job_id, miner_payload=self._payload(urls, task, max_size_mb))
        parsed, answer = await self._call(synapse, timeout)
        return bool(parsed is not None and answer.status == 200 and parsed.job_response.accepted), answer

    async def poll(self, job_id: str, timeout: float) -> tuple[str, list[str], Answer]:
        parsed, answer = await self._call(VideoUpscalingPollProtocol(job_id=job_id), timeout)
        if parsed is None or answer.status != 200:
            return "unknown", [], answer
        return parsed.poll_response.status, list(parsed.poll_response.optimized_video_urls), answer
