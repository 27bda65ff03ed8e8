"""Property-based fuzzing of every route of a real miner process over loopback HTTP (hypothesis): junk,
forged and validly signed requests with fuzzed headers and bodies never get a 500, never leave a
traceback in the miner's log, never start work, and leave its memory flat."""

from __future__ import annotations

import http.client
import json
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.auth import sign_btauth
from miner.protocol import NOT_SERVED_SYNAPSES, SERVED_SYNAPSES, LengthCheckProtocol, build_legacy_request, new_dendrite_uuid
from tests.miner.security_miner import RunningMiner, metric_values, proc_status, running_miner

pytestmark = pytest.mark.slow

ANSWERS = {200, 202, 400, 401, 403, 404, 405, 408, 413, 422, 429, 431, 501}
WORK_ROUTES = ("/VideoUpscalingProtocol", "/VideoUpscalingJobProtocol", "/v1/upscale", "/v1/jobs")
QUIET_ROUTES = ("/LengthCheckProtocol", "/TaskWarrantProtocol", "/VideoUpscalingPollProtocol", "/v1/length",
                "/v1/warrant", "/v1/jobs/abc")
AUTH_HEADERS = ("bt_header_dendrite_hotkey", "bt_header_dendrite_nonce", "bt_header_dendrite_uuid",
                "bt_header_dendrite_signature", "bt_header_axon_hotkey", "computed_body_hash", "timeout", "name",
                "X-Bittensor-Version", "X-Bittensor-Hotkey", "X-Bittensor-Nonce", "X-Bittensor-Receiver",
                "X-Bittensor-Signature", "X-Bittensor-Crypto", "Content-Type", "Expect", "Authorization")
MIB = 1 << 20

header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)
header_value = st.one_of(header_text, st.integers(-10**30, 10**30).map(str),
                         st.sampled_from(["nan", "inf", "-1", "0x", "1e999", "5" * 48, "0x" + "ab" * 64]))
headers = st.dictionaries(st.one_of(st.sampled_from(AUTH_HEADERS), st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")),
                          header_value, max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                           max_leaves=30)
synapse_like = st.fixed_dictionaries({}, optional={
    "miner_payload": st.fixed_dictionaries({}, optional={
        "reference_video_urls": st.lists(st.one_of(st.text(max_size=30), st.integers()), max_size=4),
        "task_types": st.lists(st.text(max_size=10), max_size=4),
        "maximum_optimized_size_mb": st.one_of(st.integers(), st.text(max_size=5)),
        "task_type": json_values}),
    "timeout": json_values, "job_id": json_values, "round_id": json_values, "dendrite": json_values, "axon": json_values})
bodies = st.one_of(st.binary(max_size=512), json_values.map(lambda v: json.dumps(v).encode()),
                   synapse_like.map(lambda v: json.dumps(v).encode()),
                   st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))
all_routes = st.one_of(st.sampled_from(["/" + n for n in (*SERVED_SYNAPSES, *NOT_SERVED_SYNAPSES)]),
                       st.sampled_from(["/v1/upscale", "/v1/length", "/v1/warrant", "/v1/jobs", "/health", "/metrics"]),
                       st.from_regex(r"\A/(v1/jobs|files)/[A-Za-z0-9._%/-]{0,40}(\?(exp|sig)=[A-Za-z0-9%&=.-]{0,30})?\Z"),
                       st.from_regex(r"\A/[A-Za-z0-9._%-]{0,30}\Z"))
methods = st.sampled_from(["POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def miner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMiner]:
    # one source address sends everything here: its refusal budget must not run out mid-fuzz
    with running_miner(tmp_path_factory.mktemp("fuzz"), validators=1,
                       extra_toml="\n[server.limits]\nrefusal_burst = 1000000\n") as running:
        running.rss_before = proc_status(running.pid, "VmRSS")  # type: ignore[attr-defined]
        yield running
        text = running.log_text()
        assert "Traceback" not in text and '"level": "ERROR"' not in text, text[-3000:]
        assert not metric_values(running.url, "miner_tasks"), "no work may start"
        assert '"msg": "task"' not in text
        growth = proc_status(running.pid, "VmRSS") - running.rss_before  # type: ignore[attr-defined]
        assert growth < 40 * MIB, f"resident memory grew {growth / MIB:.1f} MiB"


def _call(miner: RunningMiner, method: str, path: str, head: dict[str, str], body: bytes) -> int:
    host, port = miner.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request(method, path, body=body, headers=head)
        response = conn.getresponse()
        response.read()
        return response.status
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        return 0  # closed by the server mid-request (a refusal before the body): never a 500
    finally:
        conn.close()


@FUZZ
@given(method=methods, path=all_routes, head=headers, body=bodies)
def test_unsigned_and_forged_requests(miner: RunningMiner, method: str, path: str, head: dict[str, str], body: bytes) -> None:
    status = _call(miner, method, path, head, body)
    assert status in ANSWERS | {0}, (status, method, path, head)
    assert status not in (200, 202) or path in ("/health", "/metrics") or path.startswith("/files/"), (status, path)


@FUZZ
@given(path=st.sampled_from(QUIET_ROUTES + WORK_ROUTES), extra=headers, body=bodies)
def test_signed_requests_with_fuzzed_bodies(miner: RunningMiner, path: str, extra: dict[str, str], body: bytes) -> None:
    wallet = miner.validators[0]
    if path in WORK_ROUTES and _could_be_work(body):
        body = b"[" + body  # work routes get only bodies that cannot parse: no work may start
    if path.startswith("/v1"):
        signed = sign_btauth(wallet, miner.hotkey, "GET" if path == "/v1/jobs/abc" else "POST", path, body)
        method = "GET" if path == "/v1/jobs/abc" else "POST"
    else:
        route = path[1:]
        req = build_legacy_request(LengthCheckProtocol(), wallet.hotkey, axon_hotkey=miner.hotkey, axon_ip="127.0.0.1",
                                   axon_port=0, timeout=12.0, dendrite_uuid=new_dendrite_uuid())
        signed, method = {**req.headers, "name": route}, "POST"
    lowered = {k.lower() for k in signed}
    head = {**{k: v for k, v in extra.items() if k.lower() not in lowered}, **signed}
    status = _call(miner, method, path, head, body)
    assert status in ANSWERS, (status, path, body[:200])


def _could_be_work(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
