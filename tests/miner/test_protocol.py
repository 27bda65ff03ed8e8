"""The bittensor-10 wire format against golden vectors recorded from a REAL bittensor 10.1.0
Dendrite and Axon (tests/data/golden/legacy_bt10.json, made by scripts/record_golden_vectors.py),
plus the Vidaio models' list/legacy-scalar rules and task geometry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bittensor.keyfiles import Keypair

from miner.auth import (
    BadSignature, BodyHashMismatch, LegacyVerifier, ReplayedRequest, StaleNonce, UnknownHotkey, WrongReceiver,
    check_access,
)
from miner.chain import StaticAllowList
from miner.protocol import (
    SERVED_SYNAPSES, MinerResponse, UpscalingMinerPayload, UpscalingTask, VideoUpscalingProtocol,
    build_legacy_request, legacy_response, parse_legacy_request, parse_legacy_response,
)

GOLDEN = json.loads((Path(__file__).parents[1] / "data/golden/legacy_bt10.json").read_text())
KEYS = GOLDEN["keys"]
MINER, VALIDATOR = KEYS["miner"]["ss58"], KEYS["validator"]["ss58"]
EXCHANGES = {e["case"]: e for e in GOLDEN["exchanges"]}
OK = [e for e in GOLDEN["exchanges"] if e["case"].startswith("ok/")]
CLIENT_ADDED = {"host", "accept", "accept-encoding", "user-agent", "content-length", "content-type"}
SERVER_ADDED = {"date", "server", "content-length", "content-type"}
NS = 1_000_000_000


def headers_of(entry: dict) -> dict[str, str]:
    return dict(entry["request"]["headers"])


def body_of(entry: dict) -> bytes:
    return entry["request"]["body"].encode()


def nonce_of(entry: dict) -> int:
    return int(headers_of(entry)["bt_header_dendrite_nonce"])


def sent_synapse(entry: dict):
    return SERVED_SYNAPSES[entry["synapse"]].model_validate_json(entry["request"]["body"])


def without(data: dict, *paths: str) -> dict:
    """A copy of a JSON object with the dotted ``paths`` set to a placeholder (order kept)."""
    data = json.loads(json.dumps(data))
    for path in paths:
        *parents, leaf = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = "<varies>"
    return data


def test_golden_file_is_what_a_real_bittensor_10_recorded():
    assert GOLDEN["bittensor"] == "10.1.0"
    assert sorted(e["synapse"] for e in OK) == sorted(SERVED_SYNAPSES)
    for role in ("validator", "miner", "outsider"):
        assert Keypair.create_from_mnemonic(KEYS[role]["mnemonic"]).ss58_address == KEYS[role]["ss58"]


@pytest.mark.parametrize("entry", OK, ids=lambda e: e["synapse"])
def test_recorded_dendrite_requests_verify(entry):
    verifier = LegacyVerifier(MINER)
    verified = verifier.verify(entry["request"]["path"], headers_of(entry), body_of(entry), now_ns=nonce_of(entry) + NS)
    assert verified.hotkey == VALIDATOR
    assert verified.synapse.timeout == entry["timeout"]
    sent = json.loads(entry["request"]["body"])
    ours = verified.synapse.model_dump(mode="json")
    for field in type(verified.synapse).model_fields:
        if field not in ("name", "timeout", "total_size", "header_size", "dendrite", "axon", "computed_body_hash"):
            assert ours[field] == sent[field], field


def test_two_clip_round_keeps_urls_and_tasks_in_order():
    synapse, headers = parse_legacy_request("/VideoUpscalingProtocol", headers_of(EXCHANGES["ok/VideoUpscalingProtocol"]),
                                            body_of(EXCHANGES["ok/VideoUpscalingProtocol"]))
    assert len(synapse.miner_payload.reference_video_urls) == 2
    assert synapse.miner_payload.tasks() == ["SD2HD", "SD24K"]
    assert synapse.miner_payload.maximum_optimized_size_mb == 50 and synapse.round_id == "round-42"
    assert headers.dendrite_hotkey == VALIDATOR and headers.axon_hotkey == MINER and headers.timeout == 135.0


def test_mutated_recordings_are_refused():
    up = EXCHANGES["ok/VideoUpscalingProtocol"]
    now = nonce_of(up) + NS
    cases = [
        ({**headers_of(up), "bt_header_dendrite_signature": "0x" + "ab" * 64}, BadSignature),
        ({**headers_of(up), "bt_header_dendrite_hotkey": KEYS["outsider"]["ss58"]}, BadSignature),
        ({**headers_of(up), "bt_header_dendrite_nonce": str(nonce_of(up) - 1)}, BadSignature),
        ({**headers_of(up), "computed_body_hash": "0" * 64}, BodyHashMismatch),
    ]
    for headers, error in cases:
        with pytest.raises(error):
            LegacyVerifier(MINER).verify("/VideoUpscalingProtocol", headers, body_of(up), now_ns=now)


def test_recorded_failure_cases_fail_here_too():
    forged = EXCHANGES["forged_signature"]
    forged_headers = {**headers_of(forged), **forged["sent_to_axon"]}
    with pytest.raises(BadSignature):
        LegacyVerifier(MINER).verify("/LengthCheckProtocol", forged_headers, body_of(forged), now_ns=nonce_of(forged))
    wrong = EXCHANGES["wrong_receiver"]
    with pytest.raises(WrongReceiver):
        LegacyVerifier(MINER).verify("/LengthCheckProtocol", headers_of(wrong), body_of(wrong), now_ns=nonce_of(wrong))
    stale = EXCHANGES["stale_nonce"]
    with pytest.raises(StaleNonce, match="acceptable age is 14.00 s"):
        LegacyVerifier(MINER).verify("/LengthCheckProtocol", headers_of(stale), body_of(stale), now_ns=stale["received_at_ns"])
    replay, verifier = EXCHANGES["replay"], LegacyVerifier(MINER)
    verifier.verify("/TaskWarrantProtocol", headers_of(replay), body_of(replay), now_ns=nonce_of(replay))
    with pytest.raises(ReplayedRequest):
        verifier.verify("/TaskWarrantProtocol", headers_of(replay), body_of(replay), now_ns=nonce_of(replay))
    outsider = EXCHANGES["blacklisted"]
    verified = LegacyVerifier(MINER).verify("/LengthCheckProtocol", headers_of(outsider), body_of(outsider),
                                            now_ns=nonce_of(outsider))
    with pytest.raises(UnknownHotkey):
        check_access(StaticAllowList([VALIDATOR]), verified.hotkey, 0.0)
    for case, status in (("forged_signature", 401), ("wrong_receiver", 401), ("stale_nonce", 401),
                         ("replay", 401), ("blacklisted", 403)):
        assert EXCHANGES[case]["response"]["status"] == status


@pytest.mark.parametrize("entry", OK, ids=lambda e: e["synapse"])
def test_our_builder_emulates_the_dendrite(entry):
    recorded_headers, recorded_body = headers_of(entry), json.loads(entry["request"]["body"])
    sent = sent_synapse(entry)
    req = build_legacy_request(
        sent.model_copy(update={"dendrite": None, "axon": None}), Keypair.create_from_mnemonic(KEYS["validator"]["mnemonic"]),
        axon_hotkey=MINER, axon_ip=recorded_headers["bt_header_axon_ip"], axon_port=int(recorded_headers["bt_header_axon_port"]),
        timeout=entry["timeout"], dendrite_uuid=recorded_headers["bt_header_dendrite_uuid"],
        dendrite_ip=recorded_headers["bt_header_dendrite_ip"], nonce_ns=nonce_of(entry))
    assert req.path == entry["request"]["path"]
    theirs = [(k, v) for k, v in entry["request"]["headers"] if k.lower() not in CLIENT_ADDED]
    ours = [(k, v) for k, v in req.headers.items() if k.lower() not in CLIENT_ADDED]
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    varies = {"bt_header_dendrite_signature", "total_size"}  # sr25519 is randomised; total_size is sys.getsizeof
    assert {k: v for k, v in ours if k not in varies} == {k: v for k, v in theirs if k not in varies}
    assert json.dumps(without(json.loads(req.body), "dendrite.signature", "total_size")) == \
        json.dumps(without(recorded_body, "dendrite.signature", "total_size"))
    assert req.body.decode() == json.dumps(json.loads(req.body))  # aiohttp's json.dumps formatting
    assert entry["request"]["body"] == json.dumps(recorded_body)
    verified = LegacyVerifier(MINER).verify(req.path, req.headers, req.body, now_ns=nonce_of(entry) + NS)
    assert verified.hotkey == VALIDATOR


@pytest.mark.parametrize("entry", GOLDEN["exchanges"], ids=lambda e: e["case"])
def test_parse_response_matches_the_real_dendrite(entry):
    response = entry["response"]
    parsed = parse_legacy_response(sent_synapse(entry), response["status"], dict(response["headers"]),
                                   response["body"].encode())
    real = entry["dendrite_result"]
    for side in ("dendrite", "axon"):
        for key in ("status_code", "status_message"):
            assert getattr(getattr(parsed, side), key) == real[side][key], (side, key)
    assert parsed.axon.process_time == real["axon"]["process_time"]
    ours = parsed.model_dump(mode="json")
    outputs = set(type(parsed).model_fields) - set(type(parsed).__mro__[1].model_fields)
    assert {k: ours[k] for k in outputs} == {k: real[k] for k in outputs}


@pytest.mark.parametrize("entry", OK, ids=lambda e: e["synapse"])
def test_our_answer_matches_the_real_axon(entry):
    """Same request, same outputs: our headers and body equal the real axon's (but total_size)."""
    synapse, _ = parse_legacy_request(entry["request"]["path"], headers_of(entry), body_of(entry))
    axon_body = json.loads(entry["response"]["body"])
    outputs = set(type(synapse).model_fields) - set(type(synapse).__mro__[1].model_fields)
    for field in outputs:
        if not type(synapse).model_fields[field].frozen:
            setattr(synapse, field, getattr(type(synapse).model_validate(axon_body), field))
    body, headers = legacy_response(synapse, 200, "Success", process_time=axon_body["axon"]["process_time"])
    theirs = [(k, v) for k, v in entry["response"]["headers"] if k.lower() not in SERVER_ADDED]
    ours = [(k, v) for k, v in headers.items() if k.lower() not in SERVER_ADDED]
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    assert {k: v for k, v in ours if k != "total_size"} == {k: v for k, v in theirs if k != "total_size"}
    assert without(json.loads(body), "total_size") == without(axon_body, "total_size")


def test_a_real_dendrite_read_our_answers():
    """Recorded when the vectors were made: bittensor 10.1.0's dendrite parsing answers from ``answer_synapse``
    and from ``legacy_response(None, 403, ...)`` (what ``miner.auth`` sends)."""
    results = {c["case"]: c["dendrite_result"] for c in GOLDEN["ours_parsed_by_bt10_dendrite"]}
    assert results["ours/VideoUpscalingProtocol"]["miner_response"]["optimized_video_urls"]
    assert all(r["dendrite"]["status_code"] == 200 for c, r in results.items() if c != "ours/refused")
    assert results["ours/refused"]["dendrite"]["status_code"] == 403
    body, headers = legacy_response(None, 403, results["ours/refused"]["dendrite"]["status_message"])
    sent = sent_synapse(EXCHANGES["ok/LengthCheckProtocol"])
    parsed = parse_legacy_response(sent, 403, headers, body)
    assert parsed.dendrite.status_message == results["ours/refused"]["dendrite"]["status_message"]


def test_error_message_is_header_safe():
    body, headers = legacy_response(None, 401, "bad\r\nheader: ünïcode")
    assert headers["bt_header_axon_status_message"] == "bad??header: ?n?code"
    assert json.loads(body) == {"message": "bad??header: ?n?code"}


# --- models -----------------------------------------------------------------------------------------


def test_payload_legacy_scalars_and_lists_follow_vidaio():
    legacy = UpscalingMinerPayload.model_validate({"reference_video_url": "u1", "task_type": "SD24K"})
    assert legacy.reference_video_urls == ["u1"] and legacy.task_types == ["SD24K"]
    batched = UpscalingMinerPayload(reference_video_urls=["u1", "u2"], task_types=["HD24K"])
    assert batched.reference_video_url == "u1" and batched.tasks() == ["HD24K", "HD24K"]
    assert UpscalingMinerPayload().task_types == ["HD24K"]  # Vidaio's default task
    assert MinerResponse(optimized_video_urls=["a", "b"]).optimized_video_url == "a"
    assert MinerResponse(optimized_video_url="a").optimized_video_urls == ["a"]
    with pytest.raises(ValueError):
        UpscalingMinerPayload(maximum_optimized_size_mb=0)


def test_payload_is_frozen_like_vidaio():
    synapse = VideoUpscalingProtocol(miner_payload={"reference_video_urls": ["u"]})
    with pytest.raises(ValueError):
        synapse.miner_payload = UpscalingMinerPayload()


def test_task_geometry():
    assert UpscalingTask.parse("SD2HD").output_size == (1920, 1080) and UpscalingTask.SD2HD.scale == 2
    assert UpscalingTask.parse("SD24K").input_size == (960, 540) and UpscalingTask.SD24K.scale == 4
    assert UpscalingTask.parse("4K28K").output_size == (7680, 4320) and UpscalingTask.K4_TO_K8.scale == 2
    assert UpscalingTask.HD24K.input_size == (1920, 1080)
    with pytest.raises(ValueError, match="known: SD2HD, HD24K, SD24K, 4K28K"):
        UpscalingTask.parse("8K216K")


@pytest.mark.parametrize("header", ["bt_header_dendrite_nonce", "bt_header_dendrite_version", "bt_header_axon_port",
                                    "timeout"])
def test_numeric_headers_too_long_or_too_large_are_401(header: str) -> None:
    """A 400-digit number overflows float conversion: refused as a 401, never an unhandled error."""
    from miner.protocol.wire import LegacyHeaders, WireError

    for raw in ("9" * 400, "9" * 33, "1e400"):
        with pytest.raises(WireError) as refused:
            LegacyHeaders.parse({header: raw})
        assert refused.value.status == 401, raw
