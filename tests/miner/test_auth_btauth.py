"""btauth/1 authentication: requests signed with ``sign_btauth`` by real wallets, verified by
``BtAuthVerifier`` and by the ``BtAuth`` dependency in a real FastAPI app ({"error": ...} bodies)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from miner.auth import (
    BadSignature, BtAuth, BtAuthVerifier, Caller, LegacyAuth, MalformedRequest, ReplayedRequest, StaleNonce,
    WrongReceiver, sign_btauth,
)
from miner.chain import StaticAllowList, ValidatorInfo
from miner.metrics import MinerMetrics
from miner.server.gate import Gate, gate_caller
from miner.server.limits import OpsAccess, ServerLimits

PATH = "/v1/upscale"
BODY = json.dumps({"reference_video_urls": ["https://example.com/a.mp4"], "task_types": ["SD2HD"]}).encode()


@pytest.fixture()
def verifier(miner_wallet):
    return BtAuthVerifier(miner_wallet.hotkey.ss58_address)


def test_signed_request_verifies(verifier, validator_wallet, miner_wallet):
    headers = sign_btauth(validator_wallet, miner_wallet.hotkey.ss58_address, "POST", PATH, BODY)
    assert verifier.verify(headers, BODY, method="POST", path=PATH) == validator_wallet.hotkey.ss58_address


@pytest.mark.parametrize("change, error, text", [
    (lambda h, b, p: (h, b + b" ", p), BadSignature, "does not verify"),
    (lambda h, b, p: (h, b, "/v1/jobs"), BadSignature, "does not verify"),
    (lambda h, b, p: ({**h, "X-Bittensor-Signature": "0x" + "33" * 64}, b, p), BadSignature, "does not verify"),
    (lambda h, b, p: ({k: v for k, v in h.items() if k != "X-Bittensor-Nonce"}, b, p), MalformedRequest, "missing"),
    (lambda h, b, p: ({k: v for k, v in h.items() if k != "X-Bittensor-Receiver"}, b, p), WrongReceiver, "requires receiver"),
])
def test_tampering_is_refused(verifier, validator_wallet, miner_wallet, change, error, text):
    headers = sign_btauth(validator_wallet, miner_wallet.hotkey.ss58_address, "POST", PATH, BODY)
    headers, body, path = change(headers, BODY, PATH)
    with pytest.raises(error, match=text):
        verifier.verify(headers, body, method="POST", path=path)


def test_wrong_receiver(verifier, validator_wallet, make_wallet):
    headers = sign_btauth(validator_wallet, make_wallet("other-miner").hotkey.ss58_address, "POST", PATH, BODY)
    with pytest.raises(WrongReceiver, match="different receiving hotkey"):
        verifier.verify(headers, BODY, method="POST", path=PATH)


def test_stale_nonce_and_replay(verifier, validator_wallet, miner_wallet):
    me = miner_wallet.hotkey.ss58_address
    old = sign_btauth(validator_wallet, me, "POST", PATH, BODY, nonce_ns=time.time_ns() - 11 * 1_000_000_000)
    with pytest.raises(StaleNonce, match="older than"):
        verifier.verify(old, BODY, method="POST", path=PATH)
    fresh = sign_btauth(validator_wallet, me, "POST", PATH, BODY)
    verifier.verify(fresh, BODY, method="POST", path=PATH)
    with pytest.raises(ReplayedRequest, match="already used"):
        verifier.verify(fresh, BODY, method="POST", path=PATH)


def make_app(miner_hotkey: str, registry, min_stake: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.add_middleware(Gate, legacy=LegacyAuth(miner_hotkey, registry, min_stake=min_stake),
                       btauth=BtAuth(miner_hotkey, registry, min_stake=min_stake), limits=ServerLimits(),
                       ops=OpsAccess(allow=()), metrics=MinerMetrics())

    @app.post(PATH)
    async def upscale(caller: Caller = Depends(gate_caller)):
        return {"caller": caller.hotkey, "stake": caller.stake, "transport": caller.transport}

    return app


def test_dependency_happy_path_and_failures(validator_wallet, miner_wallet, make_wallet):
    me, hotkey = miner_wallet.hotkey.ss58_address, validator_wallet.hotkey.ss58_address
    client = TestClient(make_app(me, StaticAllowList([hotkey], stake=3.0), min_stake=1.0))
    headers = sign_btauth(validator_wallet, me, "POST", PATH, BODY)
    ok = client.post(PATH, headers=headers, content=BODY)
    assert ok.status_code == 200 and ok.json() == {"caller": hotkey, "stake": 3.0, "transport": "btauth"}
    replay = client.post(PATH, headers=headers, content=BODY)
    assert replay.status_code == 401 and "already used" in replay.json()["error"]
    tampered = client.post(PATH, headers=sign_btauth(validator_wallet, me, "POST", PATH, BODY), content=BODY + b"x")
    assert tampered.status_code == 401 and "does not verify" in tampered.json()["error"]
    outsider = make_wallet("outsider")
    refused = client.post(PATH, headers=sign_btauth(outsider, me, "POST", PATH, BODY), content=BODY)
    assert refused.status_code == 403 and "not a registered validator" in refused.json()["error"]
    assert client.post(PATH, headers=sign_btauth(validator_wallet, me, "POST", PATH, BODY), content=BODY).status_code == 200


def test_dependency_refuses_low_stake_and_no_permit(validator_wallet, miner_wallet):
    me, hotkey = miner_wallet.hotkey.ss58_address, validator_wallet.hotkey.ss58_address

    class Registry:
        def __init__(self, info):
            self.info = info

        def lookup(self, key):
            return self.info if key == self.info.hotkey else None

        def priority(self, key):
            return self.info.stake

    for info, text in ((ValidatorInfo(hotkey, 3, True, 9.0), "below the minimum 10"),
                       (ValidatorInfo(hotkey, 3, False, 50.0), "no validator permit")):
        client = TestClient(make_app(me, Registry(info), min_stake=10.0))
        resp = client.post(PATH, headers=sign_btauth(validator_wallet, me, "POST", PATH, BODY), content=BODY)
        assert resp.status_code == 403 and text in resp.json()["error"]
