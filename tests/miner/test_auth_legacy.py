"""Legacy (bittensor-10 synapse) authentication: requests signed by real wallets through
``build_legacy_request``, verified by ``LegacyVerifier`` and by the ``LegacyAuth`` dependency in a
real FastAPI app; every failure gets its status and a clear message in the dendrite's wire format."""

from __future__ import annotations

import json
import time

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from miner.auth import (
    BadSignature, BodyHashMismatch, BtAuth, Caller, LegacyAuth, LegacySettings, LegacyVerifier, MalformedRequest,
    ReplayedRequest, StaleNonce, WrongReceiver,
)
from miner.chain import StaticAllowList, ValidatorInfo
from miner.metrics import MinerMetrics
from miner.server.gate import Gate, gate_caller
from miner.server.limits import OpsAccess, ServerLimits
from miner.protocol import (
    LengthCheckProtocol, MinerResponse, VideoUpscalingProtocol, answer_synapse, build_legacy_request,
    new_dendrite_uuid, parse_legacy_response, parse_synapse,
)

NS = 1_000_000_000


def upscaling_synapse() -> VideoUpscalingProtocol:
    return VideoUpscalingProtocol(round_id="r1", miner_payload={
        "reference_video_urls": ["https://example.com/a.mp4", "https://example.com/b.mp4"],
        "task_types": ["SD2HD", "SD24K"], "maximum_optimized_size_mb": 50})


def signed(synapse, wallet, receiver, *, timeout=12.0, nonce_ns=None, uuid=None):
    return build_legacy_request(synapse, wallet.hotkey, axon_hotkey=receiver, axon_ip="127.0.0.1",
                                axon_port=8091, timeout=timeout, dendrite_uuid=uuid or new_dendrite_uuid(),
                                nonce_ns=nonce_ns)


@pytest.fixture()
def verifier(miner_wallet):
    return LegacyVerifier(miner_wallet.hotkey.ss58_address)


def test_round_trip_accepts_and_keeps_payload(verifier, validator_wallet, miner_wallet):
    req = signed(upscaling_synapse(), validator_wallet, miner_wallet.hotkey.ss58_address, timeout=135.0)
    verified = verifier.verify(req.path, req.headers, req.body)
    assert verified.hotkey == validator_wallet.hotkey.ss58_address
    assert verified.synapse.miner_payload.reference_video_urls == ["https://example.com/a.mp4", "https://example.com/b.mp4"]
    assert verified.synapse.miner_payload.task_types == ["SD2HD", "SD24K"]
    assert verified.synapse.timeout == 135.0 and verified.headers.timeout == 135.0


def test_header_names_are_case_insensitive(verifier, validator_wallet, miner_wallet):
    req = signed(LengthCheckProtocol(), validator_wallet, miner_wallet.hotkey.ss58_address)
    upper = {k.upper(): v for k, v in req.headers.items()}
    assert verifier.verify(req.path, upper, req.body).hotkey == validator_wallet.hotkey.ss58_address


@pytest.mark.parametrize("mutate, error, text", [
    (lambda h, b: ({**h, "bt_header_dendrite_signature": "0x" + "11" * 64}, b), BadSignature, "does not verify"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "bt_header_dendrite_signature"}, b), BadSignature, "missing"),
    (lambda h, b: ({**h, "bt_header_dendrite_nonce": str(int(h["bt_header_dendrite_nonce"]) + 1)}, b), BadSignature, "does not verify"),
    (lambda h, b: ({**h, "bt_header_dendrite_uuid": new_dendrite_uuid()}, b), BadSignature, "does not verify"),
    (lambda h, b: ({**h, "computed_body_hash": "00" * 32}, b), BodyHashMismatch, "does not match"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "bt_header_dendrite_nonce"}, b), MalformedRequest, "missing"),
    (lambda h, b: ({**h, "bt_header_dendrite_nonce": "soon"}, b), MalformedRequest, "not a number"),
])
def test_tampered_requests_are_refused(verifier, validator_wallet, miner_wallet, mutate, error, text):
    req = signed(upscaling_synapse(), validator_wallet, miner_wallet.hotkey.ss58_address)
    headers, body = mutate(dict(req.headers), req.body)
    with pytest.raises(error, match=text):
        verifier.verify(req.path, headers, body)


def test_body_tampering_is_not_covered_by_the_hash_but_the_payload_stays_parsed(verifier, validator_wallet, miner_wallet):
    """Vidaio synapses hash no fields (bittensor 10 semantics): a changed URL still verifies.

    This pins the protocol's real strength so nobody relies on the body hash for integrity.
    """
    req = signed(upscaling_synapse(), validator_wallet, miner_wallet.hotkey.ss58_address)
    body = json.loads(req.body)
    body["miner_payload"]["reference_video_urls"][0] = "https://evil.example/x.mp4"
    verified = verifier.verify(req.path, req.headers, json.dumps(body).encode())
    assert verified.synapse.miner_payload.reference_video_url == "https://evil.example/x.mp4"


def test_wrong_receiver(verifier, validator_wallet, make_wallet):
    other = make_wallet("other-miner").hotkey.ss58_address
    req = signed(LengthCheckProtocol(), validator_wallet, other)
    with pytest.raises(WrongReceiver, match="not to this miner"):
        verifier.verify(req.path, req.headers, req.body)


def test_receiver_header_swapped_after_signing_fails_the_signature(verifier, validator_wallet, miner_wallet, make_wallet):
    req = signed(LengthCheckProtocol(), validator_wallet, make_wallet("other-miner").hotkey.ss58_address)
    headers = {**req.headers, "bt_header_axon_hotkey": miner_wallet.hotkey.ss58_address}
    with pytest.raises(BadSignature):
        verifier.verify(req.path, headers, req.body)


def test_stale_and_future_nonces(verifier, validator_wallet, miner_wallet):
    me = miner_wallet.hotkey.ss58_address
    now = time.time_ns()
    old = signed(LengthCheckProtocol(), validator_wallet, me, timeout=10.0, nonce_ns=now - 15 * NS)
    with pytest.raises(StaleNonce, match="acceptable age is 14.00 s"):
        verifier.verify(old.path, old.headers, old.body, now_ns=now)
    within = signed(LengthCheckProtocol(), validator_wallet, me, timeout=10.0, nonce_ns=now - 13 * NS)
    assert verifier.verify(within.path, within.headers, within.body, now_ns=now)
    future = signed(LengthCheckProtocol(), validator_wallet, me, nonce_ns=now + 31 * NS)
    with pytest.raises(StaleNonce, match="in the future"):
        verifier.verify(future.path, future.headers, future.body, now_ns=now)


def test_timeout_header_cannot_stretch_the_window_past_the_cap(miner_wallet, validator_wallet):
    verifier = LegacyVerifier(miner_wallet.hotkey.ss58_address, LegacySettings(max_timeout_s=20.0))
    now = time.time_ns()
    req = signed(LengthCheckProtocol(), validator_wallet, miner_wallet.hotkey.ss58_address, timeout=3600.0,
                 nonce_ns=now - 30 * NS)
    with pytest.raises(StaleNonce, match="acceptable age is 24.00 s"):
        verifier.verify(req.path, req.headers, req.body, now_ns=now)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_timeout_cannot_open_the_window(verifier, validator_wallet, miner_wallet, value):
    now = time.time_ns()
    old = signed(LengthCheckProtocol(), validator_wallet, miner_wallet.hotkey.ss58_address, nonce_ns=now - 3600 * NS)
    with pytest.raises(MalformedRequest, match="not a finite number"):
        verifier.verify(old.path, {**old.headers, "timeout": value}, old.body, now_ns=now)


def test_replay_is_refused_but_out_of_order_nonces_are_not(verifier, validator_wallet, miner_wallet):
    me, uuid, now = miner_wallet.hotkey.ss58_address, new_dendrite_uuid(), time.time_ns()
    first = signed(LengthCheckProtocol(), validator_wallet, me, uuid=uuid, nonce_ns=now)
    earlier = signed(LengthCheckProtocol(), validator_wallet, me, uuid=uuid, nonce_ns=now - NS)
    verifier.verify(first.path, first.headers, first.body, now_ns=now)
    verifier.verify(earlier.path, earlier.headers, earlier.body, now_ns=now)
    for req in (first, earlier):
        with pytest.raises(ReplayedRequest, match="already used"):
            verifier.verify(req.path, req.headers, req.body, now_ns=now)


def test_replay_store_stays_bounded_and_strict(miner_wallet, validator_wallet):
    verifier = LegacyVerifier(miner_wallet.hotkey.ss58_address, LegacySettings(replay_per_key=3, replay_max_keys=2))
    me, uuid, now = miner_wallet.hotkey.ss58_address, new_dendrite_uuid(), time.time_ns()
    reqs = [signed(LengthCheckProtocol(), validator_wallet, me, uuid=uuid, nonce_ns=now - 4 + i) for i in range(5)]
    for req in reqs:
        verifier.verify(req.path, req.headers, req.body, now_ns=now)
    assert len(verifier.nonces) == 3
    for req in reqs:  # evicted ones are below the key's floor, the rest are remembered
        with pytest.raises((ReplayedRequest, StaleNonce)):
            verifier.verify(req.path, req.headers, req.body, now_ns=now)
    for k in range(3):  # three more dendrites push the first one out of the store
        extra = signed(LengthCheckProtocol(), validator_wallet, me, nonce_ns=now + k + 1)
        verifier.verify(extra.path, extra.headers, extra.body, now_ns=now)
    with pytest.raises(StaleNonce):
        verifier.verify(reqs[0].path, reqs[0].headers, reqs[0].body, now_ns=now)


# --- the FastAPI dependency, end to end -------------------------------------------------------------


def make_app(miner_hotkey: str, registry, min_stake: float = 0.0) -> FastAPI:
    """A FastAPI app behind the server's gate, as the miner's (its limits and ops access at their defaults)."""
    app = FastAPI()
    app.add_middleware(Gate, legacy=LegacyAuth(miner_hotkey, registry, min_stake=min_stake),
                       btauth=BtAuth(miner_hotkey, registry, min_stake=min_stake), limits=ServerLimits(),
                       ops=OpsAccess(allow=()), metrics=MinerMetrics())

    @app.post("/VideoUpscalingProtocol")
    async def upscale(request: Request, caller: Caller = Depends(gate_caller)):
        synapse = parse_synapse(VideoUpscalingProtocol, await request.body())
        urls = [f"https://results.example/{caller.hotkey[:6]}/{i}" for i, _ in enumerate(synapse.miner_payload.tasks())]
        synapse.miner_response = MinerResponse(optimized_video_urls=urls)
        return answer_synapse(synapse, status_code=200, message="Success")

    return app


class _Registry:
    """A registry with fixed entries (the unit under test is the dependency, not the registry)."""

    def __init__(self, *infos: ValidatorInfo) -> None:
        self.infos = {i.hotkey: i for i in infos}

    def lookup(self, hotkey):
        return self.infos.get(hotkey)

    def priority(self, hotkey):
        info = self.infos.get(hotkey)
        return info.stake if info else 0.0


def post(client: TestClient, req):
    resp = client.post(req.path, headers=req.headers, content=req.body)
    return resp, parse_legacy_response(req.synapse, resp.status_code, resp.headers, resp.content)


def test_dependency_serves_an_allowed_validator(validator_wallet, miner_wallet):
    me, hotkey = miner_wallet.hotkey.ss58_address, validator_wallet.hotkey.ss58_address
    client = TestClient(make_app(me, StaticAllowList([hotkey], stake=5.0)))
    resp, answer = post(client, signed(upscaling_synapse(), validator_wallet, me, timeout=135.0))
    assert resp.status_code == 200
    assert answer.dendrite.status_code == 200
    assert answer.miner_response.optimized_video_urls == [f"https://results.example/{hotkey[:6]}/0",
                                                          f"https://results.example/{hotkey[:6]}/1"]
    assert answer.miner_response.optimized_video_url == answer.miner_response.optimized_video_urls[0]
    assert resp.headers["bt_header_axon_status_message"] == "Success"
    assert float(resp.headers["bt_header_axon_process_time"]) >= 0.0


@pytest.mark.parametrize("info, status, text", [
    (None, 403, "not a registered validator"),
    ("no-permit", 403, "no validator permit"),
    ("low-stake", 403, "below the minimum 100"),
])
def test_dependency_refuses_non_validators(validator_wallet, miner_wallet, info, status, text):
    me, hotkey = miner_wallet.hotkey.ss58_address, validator_wallet.hotkey.ss58_address
    infos = {"no-permit": ValidatorInfo(hotkey, 7, permit=False, stake=500.0),
             "low-stake": ValidatorInfo(hotkey, 7, permit=True, stake=5.0)}
    registry = _Registry(*([infos[info]] if info else []))
    client = TestClient(make_app(me, registry, min_stake=100.0))
    resp, answer = post(client, signed(upscaling_synapse(), validator_wallet, me))
    assert resp.status_code == status
    assert text in resp.json()["message"]
    assert resp.headers["bt_header_axon_status_code"] == str(status)
    assert answer.dendrite.status_code == status and text in answer.dendrite.status_message


def test_dependency_answers_401_in_wire_format_and_keeps_serving(validator_wallet, miner_wallet):
    me, hotkey = miner_wallet.hotkey.ss58_address, validator_wallet.hotkey.ss58_address
    client = TestClient(make_app(me, StaticAllowList([hotkey])))
    copied = signed(upscaling_synapse(), validator_wallet, me)
    forged = {**copied.headers, "bt_header_dendrite_signature": "0x" + "22" * 64}
    resp = client.post(copied.path, headers=forged, content=copied.body)
    assert resp.status_code == 401 and "does not verify" in resp.json()["message"]
    assert parse_legacy_response(copied.synapse, resp.status_code, resp.headers, resp.content).dendrite.status_code == 401
    # a forged signature is verified once: its exact (hotkey, uuid, nonce) is refused from then on, unverified ...
    again = client.post(copied.path, headers=forged, content=copied.body)
    assert again.status_code == 401 and "already failed verification" in again.json()["message"]
    # ... and only that one: the validator's next request (a new nonce) is served
    good = signed(upscaling_synapse(), validator_wallet, me)
    assert post(client, good)[0].status_code == 200
    replay, _ = post(client, good)
    assert replay.status_code == 401 and "already used" in replay.json()["message"]
    fresh = signed(upscaling_synapse(), validator_wallet, me)
    bad_body = client.post(fresh.path, headers=fresh.headers, content=b"{not json")
    assert bad_body.status_code == 400 and "not JSON" in bad_body.json()["message"]
