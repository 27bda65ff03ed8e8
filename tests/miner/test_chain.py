"""Validator registry: static allow-list, the metagraph view (snapshot save/load, background
refresh, failures keep the last table) over a scripted chain reader, and endpoint publishing
(the real ``ServeAxon`` intent and the call it builds; the chain itself is not reachable here)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading

import pytest

from miner.chain import MetagraphView, StaticAllowList, ValidatorInfo, endpoint_intent, publish_endpoint


def test_static_allow_list():
    registry = StaticAllowList(["5Aaa", "5Bbb"], stake=2.5)
    assert registry.lookup("5Aaa") == ValidatorInfo(hotkey="5Aaa", uid=None, permit=True, stake=2.5)
    assert registry.lookup("5Ccc") is None
    assert registry.priority("5Bbb") == 2.5 and registry.priority("5Ccc") == 0.0
    assert len(registry) == 2


class ScriptedChain:
    """A ``ChainReader`` that returns the queued neuron tables, or raises the queued errors."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0
        self.called = threading.Event()

    def neurons(self, netuid):
        self.calls += 1
        self.called.set()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


NEURONS = [ValidatorInfo("5Val", 0, True, 12000.0), ValidatorInfo("5Min", 1, False, 3.0)]


def test_refresh_saves_a_snapshot_a_restart_answers_from(tmp_path):
    path = tmp_path / "state" / "metagraph.json"
    view = MetagraphView("finney", 85, path, 600.0, reader=ScriptedChain(NEURONS), start=False)
    assert view.lookup("5Val") is None and view.updated_at is None
    assert view.refresh()
    assert view.lookup("5Val") == NEURONS[0] and view.priority("5Val") == 12000.0
    saved = json.loads(path.read_text())
    assert saved["netuid"] == 85 and [n["hotkey"] for n in saved["neurons"]] == ["5Val", "5Min"]

    unreachable = ScriptedChain(ConnectionError("no route to chain"))
    restarted = MetagraphView("finney", 85, path, 600.0, reader=unreachable, start=False)
    assert restarted.lookup("5Min") == NEURONS[1] and restarted.updated_at == view.updated_at
    assert restarted.refresh() is False and unreachable.calls == 1
    assert restarted.lookup("5Val") == NEURONS[0]


def test_failed_refresh_keeps_the_last_table(tmp_path, caplog):
    changed = [ValidatorInfo("5New", 0, True, 1.0)]
    chain = ScriptedChain(NEURONS, TimeoutError("rpc timed out"), changed)
    view = MetagraphView("finney", 85, tmp_path / "m.json", 600.0, reader=chain, start=False)
    assert view.refresh()
    with caplog.at_level("WARNING", logger="miner.chain.metagraph"):
        assert view.refresh() is False
    assert "metagraph refresh failed" in caplog.text
    assert view.lookup("5Val") == NEURONS[0] and len(view) == 2
    assert json.loads((tmp_path / "m.json").read_text())["neurons"][0]["hotkey"] == "5Val"
    assert view.refresh()
    assert view.lookup("5Val") is None and view.lookup("5New") == changed[0]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1, "netuid": 12, "updated_at": 1.0, "neurons": []})])
def test_bad_or_foreign_snapshot_is_ignored(tmp_path, content):
    path = tmp_path / "m.json"
    path.write_text(content)
    view = MetagraphView("finney", 85, path, 600.0, reader=ScriptedChain(NEURONS), start=False)
    assert view.updated_at is None and len(view) == 0


def test_background_thread_refreshes_and_stops(tmp_path):
    chain = ScriptedChain(NEURONS)
    view = MetagraphView("finney", 85, tmp_path / "m.json", 0.01, reader=chain)
    try:
        assert chain.called.wait(5.0)
        for _ in range(500):
            if view.lookup("5Val") is not None and chain.calls >= 2:
                break
            threading.Event().wait(0.01)
        assert view.lookup("5Val") == NEURONS[0] and chain.calls >= 2
    finally:
        view.stop()
    calls = chain.calls
    threading.Event().wait(0.05)
    assert chain.calls == calls


class _Recorder:
    async def compose(self, call):
        return call


def test_serve_axon_intent_builds_the_chain_call():
    call = asyncio.run(endpoint_intent(85, "203.0.113.7", 8091).build(_Recorder(), None))
    assert (call.module, call.function) == ("SubtensorModule", "serve_axon")
    assert call.params["ip"] == int(ipaddress.ip_address("203.0.113.7")) and call.params["ip_type"] == 4
    assert call.params["port"] == 8091 and call.params["netuid"] == 85 and call.params["protocol"] == 4


@pytest.mark.parametrize("ip, port, text", [("miner.example.com", 8091, "not a host name"),
                                            ("0.0.0.0", 8091, "not reachable"), ("203.0.113.7", 70000, "out of range")])
def test_unpublishable_endpoints(ip, port, text):
    with pytest.raises(ValueError, match=text):
        endpoint_intent(85, ip, port)


class _Result:
    def __init__(self, success):
        self.success, self.message, self.extrinsic_id = success, "rate limited" if not success else "ok", "12-3"

    def raise_for_failure(self):
        raise RuntimeError(self.message)


class _Client:
    def __init__(self, success=True):
        self.success, self.sent = success, []

    def execute(self, intent, wallet):
        self.sent.append((intent, wallet))
        return _Result(self.success)


def test_publish_endpoint_submits_serve_axon_signed_by_the_wallet(miner_wallet):
    client = _Client()
    publish_endpoint(miner_wallet, netuid=85, public_url="http://203.0.113.7:9000", port=8091, client=client)
    intent, wallet = client.sent[0]
    assert (intent.op, intent.ip, intent.port, intent.netuid) == ("serve_axon", "203.0.113.7", 9000, 85)
    assert wallet is miner_wallet
    publish_endpoint(miner_wallet, 85, "203.0.113.8", 8091, client=client)
    assert (client.sent[1][0].ip, client.sent[1][0].port) == ("203.0.113.8", 8091)
    with pytest.raises(RuntimeError, match="rate limited"):
        publish_endpoint(miner_wallet, 85, "203.0.113.8", 8091, client=_Client(success=False))
