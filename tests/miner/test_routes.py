"""The served synapse and /v1 routes behind the gate, with the real routers (``legacy_router``, ``btauth_router``)
and the app's 400 handler: a handler takes the body's JSON as the gate parsed it (one parse per request), and a
body that is no synapse or no /v1 request is answered 400 (legacy wire format) or 422 (FastAPI's)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from miner.auth import BtAuth, LegacyAuth, sign_btauth
from miner.chain import StaticAllowList
from miner.jobs.organic import JobStatus
from miner.jobs.round import Clip, ClipResult
from miner.metrics import MinerMetrics
from miner.protocol import (
    LengthCheckProtocol, VideoUpscalingProtocol, WireError, build_legacy_request, new_dendrite_uuid,
    parse_legacy_response,
)
from miner.server.app import _bad_synapse
from miner.server.btauth import btauth_router
from miner.server.gate import Gate
from miner.server.legacy import legacy_router
from miner.server.limits import OpsAccess, ServerLimits


class _Service:
    """The operations the routes call, answering at once; ``rounds`` records each round's clips."""

    def __init__(self) -> None:
        self.rounds: list[list[Clip]] = []

    async def upscale(self, clips: list[Clip], **_: Any) -> list[ClipResult]:
        self.rounds.append(clips)
        return [ClipResult(url=f"https://results.example/{i}") for i, _ in enumerate(clips)]

    def max_content_length(self) -> int:
        return 10

    def warrant_task(self) -> int:
        return 2

    def start_job(self, job_id: str, clips: list[Clip], **_: Any) -> None:
        return None

    def poll(self, job_id: str) -> JobStatus:
        return JobStatus("pending")


@pytest.fixture()
def service() -> _Service:
    return _Service()


@pytest.fixture()
def client(service: _Service, validator_wallet, miner_wallet) -> TestClient:
    me, registry = miner_wallet.hotkey.ss58_address, StaticAllowList([validator_wallet.hotkey.ss58_address])
    app = FastAPI()
    app.add_exception_handler(WireError, _bad_synapse)
    app.add_middleware(Gate, legacy=LegacyAuth(me, registry), btauth=BtAuth(me, registry), limits=ServerLimits(),
                       ops=OpsAccess(allow=()), metrics=MinerMetrics())
    app.include_router(legacy_router(service, 10.0))  # type: ignore[arg-type]
    app.include_router(btauth_router(service, 10.0))  # type: ignore[arg-type]
    return TestClient(app)


@pytest.fixture()
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every text ``json.loads`` is given while the test runs (the real function still parses it)."""
    seen: list[Any] = []
    loads = json.loads

    def counting(text: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(text)
        return loads(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    return seen


def _legacy(client: TestClient, wallet, miner_wallet, synapse, body: bytes | None = None):
    req = build_legacy_request(synapse, wallet.hotkey, axon_hotkey=miner_wallet.hotkey.ss58_address,
                               axon_ip="127.0.0.1", axon_port=8091, timeout=12.0, dendrite_uuid=new_dendrite_uuid())
    return req, client.post(req.path, headers=req.headers, content=req.body if body is None else body)


def _v1(client: TestClient, wallet, miner_wallet, path: str, body: bytes):
    headers = sign_btauth(wallet, miner_wallet.hotkey.ss58_address, "POST", path, body)
    return client.post(path, headers={**headers, "Content-Type": "application/json"}, content=body)


def test_a_synapse_body_is_parsed_once(client: TestClient, service: _Service, parses: list[Any], validator_wallet,
                                       miner_wallet) -> None:
    synapse = VideoUpscalingProtocol(round_id="r1", miner_payload={
        "reference_video_urls": ["https://example.com/a.mp4", "https://example.com/b.mp4"], "task_types": ["SD2HD"]})
    req, resp = _legacy(client, validator_wallet, miner_wallet, synapse)
    answer = parse_legacy_response(req.synapse, resp.status_code, resp.headers, resp.content)
    assert resp.status_code == 200 and answer.miner_response.optimized_video_urls == [
        "https://results.example/0", "https://results.example/1"]
    assert service.rounds == [[Clip("https://example.com/a.mp4", "SD2HD"), Clip("https://example.com/b.mp4", "SD2HD")]]
    assert [text for text in parses if text == req.body] == [req.body]  # before: twice (gate, then handler)


def test_a_v1_body_is_parsed_once(client: TestClient, service: _Service, parses: list[Any], validator_wallet,
                                  miner_wallet) -> None:
    body = json.dumps({"reference_video_urls": ["https://example.com/a.mp4"], "task_types": ["SD24K"]}).encode()
    resp = _v1(client, validator_wallet, miner_wallet, "/v1/upscale", body)
    assert resp.status_code == 200 and resp.json()["urls"] == ["https://results.example/0"]
    assert service.rounds == [[Clip("https://example.com/a.mp4", "SD24K")]]
    assert [text for text in parses if text == body] == [body]  # before: twice (gate, then FastAPI)


@pytest.mark.parametrize("body, status, text", [
    (b"", 200, "Success"),  # an empty body is a synapse of defaults, as a bittensor axon reads it
    (b"{}", 200, "Success"),
    (b"null", 400, "body is not a JSON object"),
    (b"[1]", 400, "body is not a JSON object"),
    (b'{"timeout": "soon"}', 400, "body is not a valid LengthCheckProtocol: timeout"),
    (b"{not json", 400, "body is not JSON"),
])
def test_bodies_that_are_no_synapse_are_400(client: TestClient, validator_wallet, miner_wallet, body: bytes,
                                           status: int, text: str) -> None:
    req, resp = _legacy(client, validator_wallet, miner_wallet, LengthCheckProtocol(), body)
    assert resp.status_code == status and resp.headers["bt_header_axon_status_message"].startswith(text), resp.text
    assert parse_legacy_response(req.synapse, resp.status_code, resp.headers, resp.content).dendrite.status_code == status


@pytest.mark.parametrize("body, loc", [
    (b"", ["body"]), (b"[]", ["body"]), (b'{"reference_video_urls": 5}', ["body", "reference_video_urls"]),
    (b'{"reference_video_urls": ["https://example.com/a.mp4"], "task_types": ["A", "B"]}', ["body"]),
])
def test_bodies_that_are_no_v1_request_are_422(client: TestClient, service: _Service, validator_wallet, miner_wallet,
                                              body: bytes, loc: list[str]) -> None:
    resp = _v1(client, validator_wallet, miner_wallet, "/v1/upscale", body)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == loc, resp.text
    assert service.rounds == []
