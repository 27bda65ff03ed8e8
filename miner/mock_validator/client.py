"""Calling the miner as a validator does, over either transport.

``legacy``: bittensor-10 synapse routes (``POST /<SynapseName>``), requests built and signed exactly as a
bittensor 10.1.0 ``Dendrite`` does, by ``miner.protocol``'s client side. ``btauth``: the btauth/1 JSON
routes (``/v1/...``), signed by ``miner.auth.sign_btauth``. A timeout or a connection error becomes an
answer with status 408 or 503 (as the dendrite reports them), never an exception.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import bittensor as bt

from miner.auth import sign_btauth

log = logging.getLogger(__name__)

TIMEOUT_STATUS, UNREACHABLE_STATUS = 408, 503


@dataclass
class Answer:
    """One call's outcome: HTTP status, the decoded body, the status message, and the wall time."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 or self.status == 202


@dataclass
class RoundAnswer:
    """The miner's answer to one upscaling request: one URL per clip (``""`` = failed) and reasons."""

    status: int
    urls: list[str]
    message: str
    seconds: float
    errors: list[str] = field(default_factory=list)


async def send(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], timeout: float,
                method: str = "POST") -> Answer:
    start = time.perf_counter()
    try:
        async with session.request(method, url, data=body, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            raw = await resp.read()
            try:
                data = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                data = {"raw": raw[:500].decode(errors="replace")}
            body = data if isinstance(data, dict) else {"value": data}
            return Answer(resp.status, body, str(body.get("error", body.get("detail", ""))),
                          time.perf_counter() - start, raw, dict(resp.headers))
    except TimeoutError:
        return Answer(TIMEOUT_STATUS, message=f"timed out after {timeout:.0f} s", seconds=time.perf_counter() - start)
    except aiohttp.ClientError as exc:
        return Answer(UNREACHABLE_STATUS, message=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)


class BtAuthClient:
    """The btauth/1 JSON routes of the miner."""

    transport = "btauth"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, wallet: bt.Wallet, miner_hotkey: str) -> None:
        self.session, self.base_url, self.wallet, self.miner_hotkey = session, base_url.rstrip("/"), wallet, miner_hotkey

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None, timeout: float) -> Answer:
        body = json.dumps(payload).encode() if payload is not None else b""
        headers = sign_btauth(self.wallet, self.miner_hotkey, method, path, body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        return await send(self.session, self.base_url + path, body, headers, timeout, method)

    async def warrant(self, timeout: float) -> tuple[int | None, Answer]:
        answer = await self._call("POST", "/v1/warrant", {}, timeout)
        return answer.body.get("warrant_task"), answer

    async def length(self, timeout: float) -> tuple[int | None, Answer]:
        answer = await self._call("POST", "/v1/length", {}, timeout)
        return answer.body.get("max_content_length"), answer

    async def upscale(self, urls: list[str], task: str, *, max_size_mb: int, round_id: str, timeout: float) -> RoundAnswer:
        answer = await self._call("POST", "/v1/upscale", {
            "reference_video_urls": urls, "task_types": [task] * len(urls), "maximum_optimized_size_mb": max_size_mb,
            "round_id": round_id, "timeout_s": timeout}, timeout)
        results = answer.body.get("results") or []
        errors = [f"{r.get('error_kind')}: {r.get('error')}" if r.get("error_kind") else "" for r in results]
        return RoundAnswer(answer.status, list(answer.body.get("urls") or []), answer.message, answer.seconds, errors)

    async def start_job(self, job_id: str, urls: list[str], task: str, *, max_size_mb: int,
                        timeout: float) -> tuple[bool, Answer]:
        answer = await self._call("POST", "/v1/jobs", {
            "job_id": job_id, "reference_video_urls": urls, "task_types": [task] * len(urls),
            "maximum_optimized_size_mb": max_size_mb}, timeout)
        return answer.ok and bool(answer.body.get("accepted")), answer

    async def poll(self, job_id: str, timeout: float) -> tuple[str, list[str], Answer]:
        answer = await self._call("GET", f"/v1/jobs/{job_id}", None, timeout)
        return str(answer.body.get("status", "unknown")), list(answer.body.get("urls") or []), answer
