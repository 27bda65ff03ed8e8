"""The gate and the connection guards, over real loopback HTTP: a uvicorn server in a thread, built with the
miner's own ``uvicorn_options`` (guarded h11 protocol) and ``Gate``, in front of a small app whose routes
record any work they start. Requests are signed by real wallets; sources are distinct loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request

from miner.auth import BtAuth, Caller, LegacyAuth, NonceStore, ReplayedRequest, StaleNonce, sign_btauth
from miner.chain import StaticAllowList
from miner.config import load_miner_config
from miner.metrics import MinerMetrics
from miner.protocol import LengthCheckProtocol, build_legacy_request, new_dendrite_uuid
from miner.server.gate import Gate, Refusal, Slots, gate_caller, source_guard
from miner.server.limits import OpsAccess, ServerLimits, uvicorn_options
from scripts.run_local import free_port

LIMITS = dict(synapse_max_bytes=4096, json_max_bytes=4096, body_timeout_s=1.0, max_body_reads_per_ip=2, header_timeout_s=1.0,
              keep_alive_s=0, max_connections_per_ip=8, refusal_burst=5, refusal_rate_per_s=0.01, block_s=1.5, max_header_count=32)
CROWDED_LIMITS = dict(max_in_flight=4, open_in_flight=2, max_connections=12, max_connections_per_ip=4,
                      header_timeout_s=10.0)
NS = 1_000_000_000


class Server:
    def __init__(self, host: str, port: int, app: FastAPI, hotkey: str, validator, metrics: MinerMetrics) -> None:
        self.host, self.port, self.app, self.hotkey, self.validator = host, port, app, hotkey, validator
        self.metrics = metrics
        self.work: list[str] = []
        self.release = threading.Event()


@contextlib.contextmanager
def _serving(validator_wallet, miner_wallet, tmp_path: Path, limits: dict[str, float], *, host: str = "127.0.0.1",
             listener: socket.socket | None = None) -> Iterator[Server]:
    """The gate and the guards listening on ``host``, or on ``listener`` (a bound socket, reached at ``host``)."""
    me, hotkey = miner_wallet.hotkey.ss58_address, validator_wallet.hotkey.ss58_address
    registry = StaticAllowList([hotkey], stake=10.0)
    port = listener.getsockname()[1] if listener else free_port()
    toml = tmp_path / "miner.toml"
    toml.write_text(f'[server]\nhost = "{host}"\nport = {port}\n[server.limits]\n'
                    + "".join(f"{k} = {v}\n" for k, v in limits.items())
                    + '[server.ops]\nallow = ["127.0.0.1/32"]\ntoken = "s3cret"\n')
    config = load_miner_config(toml)
    limits, metrics = ServerLimits.from_config(config), MinerMetrics()
    app = FastAPI()
    app.state.limits, app.state.metrics, app.state.sources = limits, metrics, source_guard(limits, metrics)
    app.add_middleware(Gate, legacy=LegacyAuth(me, registry), btauth=BtAuth(me, registry), limits=limits,
                       ops=OpsAccess.from_config(config), metrics=metrics, sources=app.state.sources)
    srv = Server(host, port, app, me, validator_wallet, metrics)

    @app.post("/LengthCheckProtocol")
    async def length(request: Request, caller: Caller = Depends(gate_caller)):
        srv.work.append(f"length:{caller.hotkey}:{len(await request.body())}")
        return {"ok": True}

    @app.post("/v1/upscale")
    async def upscale(request: Request, caller: Caller = Depends(gate_caller)):
        srv.work.append(f"upscale:{caller.hotkey}:{len(await request.body())}")
        while not srv.release.is_set():
            await asyncio.sleep(0.02)
        return {"ok": True}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    uv = uvicorn.Server(uvicorn.Config(app, **{**uvicorn_options(config, app), "lifespan": "off"}))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [listener] if listener else None}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield srv
    finally:
        srv.release.set()
        uv.should_exit = True
        thread.join(10)


@pytest.fixture()
def server(validator_wallet, miner_wallet, tmp_path: Path) -> Iterator[Server]:
    with _serving(validator_wallet, miner_wallet, tmp_path, LIMITS) as srv:
        yield srv


@pytest.fixture()
def crowded(validator_wallet, miner_wallet, tmp_path: Path) -> Iterator[Server]:
    """Room for few connections, and a header deadline long enough to watch them idle."""
    with _serving(validator_wallet, miner_wallet, tmp_path, CROWDED_LIMITS) as srv:
        yield srv


def _connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5, source_address=(source, 0))
    return sock


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"", *, length: int | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    if not data:
        return 0, {}, b""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(rest) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _send(server: Server, raw: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    with _connect(server, source) as sock:
        sock.sendall(raw)
        return _answer(sock)


def _legacy(server: Server, **kw) -> tuple[dict[str, str], bytes]:
    req = build_legacy_request(LengthCheckProtocol(), server.validator.hotkey, axon_hotkey=server.hotkey,
                               axon_ip="127.0.0.1", axon_port=server.port, timeout=12.0,
                               dendrite_uuid=new_dendrite_uuid(), **kw)
    return dict(req.headers), req.body


def _btauth(server: Server, body: bytes) -> dict[str, str]:
    return {**sign_btauth(server.validator, server.hotkey, "POST", "/v1/upscale", body), "Content-Type": "application/json"}


def test_signed_requests_are_served_and_unsigned_ones_refused_before_the_body(server: Server) -> None:
    headers, body = _legacy(server)
    assert _send(server, _request("POST", "/LengthCheckProtocol", headers, body))[0] == 200
    server.release.set()
    payload = json.dumps({"reference_video_urls": []}).encode()
    assert _send(server, _request("POST", "/v1/upscale", _btauth(server, payload), payload))[0] == 200
    assert server.work == [f"length:{server.validator.hotkey.ss58_address}:{len(body)}",
                           f"upscale:{server.validator.hotkey.ss58_address}:{len(payload)}"]
    with _connect(server) as sock:  # no auth headers and a 1 GB body announced: refused from the headers
        sock.sendall(_request("POST", "/LengthCheckProtocol", {}, length=10**9))
        status, answer_headers, answer = _answer(sock)
    assert status == 401 and answer_headers["connection"] == "close"
    assert answer_headers["bt_header_axon_status_code"] == "401" and b"missing" in answer
    assert len(server.work) == 2


def test_declared_and_chunked_bodies_over_the_cap_are_413(server: Server) -> None:
    headers, _ = _legacy(server)
    status, _, answer = _send(server, _request("POST", "/LengthCheckProtocol", headers, length=10**9))
    assert status == 413 and b"4096-byte limit" in answer
    headers, _ = _legacy(server)
    with _connect(server) as sock:
        head = _request("POST", "/LengthCheckProtocol", headers).replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
        sock.sendall(head)
        for _ in range(3):  # 3 x 2 KiB chunks: the third crosses the 4 KiB cap
            sock.sendall(b"800\r\n" + b"x" * 2048 + b"\r\n")
        status, _, answer = _answer(sock)
    assert status == 413 and b"exceeds" in answer
    assert server.work == []


def test_a_body_that_trickles_in_is_cut_off_with_408(server: Server) -> None:
    body = b'{"reference_video_urls": []}'
    with _connect(server) as sock:
        began = time.monotonic()
        sock.sendall(_request("POST", "/v1/upscale", _btauth(server, body), body[:5], length=len(body)))
        status, _, answer = _answer(sock)
    assert status == 408 and 0.9 < time.monotonic() - began < 3.0, answer
    assert server.work == []


def test_a_source_reads_few_bodies_at_once(server: Server) -> None:
    body = b'{"reference_video_urls": []}'
    slow = [_connect(server, "127.0.0.8") for _ in range(2)]
    try:
        for sock in slow:  # two claims whose bodies trickle in: the source's two body reads
            sock.sendall(_request("POST", "/v1/upscale", _btauth(server, body), body[:5], length=len(body)))
        time.sleep(0.2)
        status, _, answer = _send(server, _request("POST", "/v1/upscale", _btauth(server, body), body), source="127.0.0.8")
        assert status == 503 and b"bodies in flight from this address" in answer
        server.release.set()
        assert _send(server, _request("POST", "/v1/upscale", _btauth(server, body), body))[0] == 200  # other source
    finally:
        for sock in slow:
            sock.close()


def test_forged_btauth_signature_is_verified_once_per_nonce(server: Server) -> None:
    body = b'{"reference_video_urls": []}'
    headers = _btauth(server, body)
    tampered = body.replace(b"[]", b"[ ]")
    first = _send(server, _request("POST", "/v1/upscale", headers, tampered))
    again = _send(server, _request("POST", "/v1/upscale", headers, tampered), source="127.0.0.3")
    assert first[0] == 401 and b"does not verify" in first[2]
    assert again[0] == 401 and b"already failed verification" in again[2]
    server.release.set()
    assert _send(server, _request("POST", "/v1/upscale", _btauth(server, body), body))[0] == 200  # next nonce: served


def test_deep_json_is_400_only_after_the_signature(server: Server) -> None:
    deep = b"[" * 2000 + b"]" * 2000
    status, _, answer = _send(server, _request("POST", "/v1/upscale", _btauth(server, deep), deep))
    assert status == 400 and b"nests deeper" in answer and server.work == []


def test_refused_sources_are_blocked_then_let_back(server: Server) -> None:
    statuses = [_send(server, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.9")[0] for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    assert _send(server, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.9")[0] == 0  # closed unread
    assert _send(server, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.10")[0] == 401  # others not
    headers, body = _legacy(server)
    assert _send(server, _request("POST", "/LengthCheckProtocol", headers, body))[0] == 200
    time.sleep(1.6)  # block_s: the source is heard again, but its budget refills slowly (0.01/s here)
    status, _, answer = _send(server, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.9")
    assert status == 429 and b"missing" in answer and b"blocked for 1.5 s" in answer
    text = server.metrics.render().decode()
    assert 'miner_refused_requests_total{reason="unauthenticated"}' in text
    assert 'miner_connections_closed_total{reason="blocked"} 1.0' in text and "miner_blocked_sources_total 2.0" in text


def test_slow_headers_and_idle_connections_are_closed(server: Server) -> None:
    began = time.monotonic()
    with _connect(server, "127.0.0.4") as idle, _connect(server, "127.0.0.4") as slow:
        slow.sendall(b"POST /LengthCheckProtocol HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            time.sleep(0.3)
            slow.sendall(b"X-A: b\r\n")
        assert slow.recv(100) == b"" and idle.recv(100) == b""
    assert 0.9 < time.monotonic() - began < 3.0
    assert 'miner_connections_closed_total{reason="header_timeout"} 2.0' in server.metrics.render().decode()
    for _ in range(4):  # each missed deadline spends a token of the budget (5): the 6th blocks the source
        with _connect(server, "127.0.0.4") as idle:
            idle.recv(100)
    with _connect(server, "127.0.0.4") as late:
        assert late.recv(100) == b""
    assert 'miner_connections_closed_total{reason="blocked"} 1.0' in server.metrics.render().decode()


def test_connections_per_ip_are_capped(server: Server) -> None:
    socks = [_connect(server, "127.0.0.5") for _ in range(LIMITS["max_connections_per_ip"])]
    try:
        with _connect(server, "127.0.0.5") as extra:
            assert extra.recv(100) == b""  # closed at once
        assert _send(server, _request("GET", "/health", {}), source="127.0.0.1")[0] == 200  # another source
    finally:
        for sock in socks:
            sock.close()


def test_idle_connections_cannot_lock_validators_out(crowded: Server) -> None:
    """Sources filling the connection limit with idle connections (the defaults: 16 IPs x 64 idle connections
    filled uvicorn's 1024 and every request got 503): the longest idle ones are closed to make room; a
    connection with a request in flight is not."""
    body = b'{"reference_video_urls": []}'
    busy = _connect(crowded)
    busy.sendall(_request("POST", "/v1/upscale", _btauth(crowded, body), body))
    while not crowded.work:
        time.sleep(0.02)
    limit, cap = CROWDED_LIMITS["max_connections"], CROWDED_LIMITS["max_connections_per_ip"]
    idle = []
    for i in range(limit - 1):  # the last of them brings the open connections to the limit
        idle.append(_connect(crowded, f"127.0.0.{11 + i // cap}"))
        time.sleep(0.02)
    time.sleep(0.3)
    try:
        headers, payload = _legacy(crowded)
        assert _send(crowded, _request("POST", "/LengthCheckProtocol", headers, payload), source="127.0.0.20")[0] == 200
        for sock in idle:
            sock.settimeout(0.2)
        assert [sock.recv(100) for sock in idle[:2]] == [b"", b""]  # the two idle the longest: closed
        for sock in idle[2:]:
            with pytest.raises(socket.timeout):  # the others: still open
                sock.recv(100)
        crowded.release.set()
        assert _answer(busy)[0] == 200  # the oldest connection, but busy: never closed for room
    finally:
        busy.close()
        for sock in idle:
            sock.close()
    assert 'miner_connections_closed_total{reason="evicted"} 2.0' in crowded.metrics.render().decode()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _sources_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.fields["source"] for record in caplog.records if record.msg == "refusing requests from a source"]


@pytest.mark.parametrize("ip, prefix, source", [
    ("203.0.113.7", 64, "203.0.113.7"),
    ("::ffff:203.0.113.7", 64, "203.0.113.7"),  # IPv4-mapped (a dual-stack socket): the IPv4 address
    ("2001:db8:1:2:a:b:c:d", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),
    ("2001:db8:1:2ff::1", 56, "2001:db8:1:200::/56"),
    ("2001:db8::1", 128, "2001:db8::1/128"),
    ("fe80::1%eth0", 64, "fe80::/64"),
    ("::1", 64, "::/64"),
    ("", 64, ""),  # a Unix socket's client
    ("unknown", 64, "unknown"),
])
def test_sources_are_ipv4_addresses_and_ipv6_networks(ip: str, prefix: int, source: str) -> None:
    assert ServerLimits(ipv6_source_prefix=prefix).source_of(ip) == source


def test_the_addresses_of_one_ipv6_64_share_one_refusal_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Six unauthenticated requests from six addresses of one /64 (one host's allocation): the budget of 5 runs out
    and the whole /64 is blocked, its next address included; an address of the next /64 is still heard."""
    async def app(scope: dict, receive, send) -> None:
        raise AssertionError("an unauthenticated request reached the app")

    nobody = StaticAllowList([], stake=0.0)
    gate = Gate(app, legacy=LegacyAuth("miner", nobody), btauth=BtAuth("miner", nobody), limits=ServerLimits(**LIMITS),
                ops=OpsAccess(allow=()), metrics=MinerMetrics())

    def status_from(ip: str) -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/LengthCheckProtocol", "headers": [],
                 "client": (ip, 40000)}
        asyncio.run(gate(scope, receive, send))
        return sent[0]["status"]

    statuses = [status_from(f"2001:db8:1:2::{i:x}") for i in range(1, 7)]
    assert statuses == [401] * 5 + [429]
    assert status_from("2001:db8:1:2:ffff:ffff:ffff:ffff") == 429
    assert status_from("2001:db8:1:3::1") == 401
    assert gate.sources.blocked("2001:db8:1:2::/64") and len(gate.sources) == 2
    assert _sources_logged(caplog) == ["2001:db8:1:2::/64"] * 2 + ["2001:db8:1:3::/64"]  # first refusal, block


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_an_ipv6_client_is_capped_and_blocked_as_its_64(validator_wallet, miner_wallet, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Over real IPv6 connections (::1): the per-source connection cap, the refusal budget and the block apply to
    the client's /64, and the log names it as such."""
    with _serving(validator_wallet, miner_wallet, tmp_path, LIMITS, host="::1") as srv:
        socks = [_connect(srv, "::1") for _ in range(LIMITS["max_connections_per_ip"])]
        try:
            with _connect(srv, "::1") as extra:
                assert extra.recv(100) == b""  # over the cap: closed at once
        finally:
            for sock in socks:
                sock.close()
        time.sleep(0.2)
        statuses = [_send(srv, _request("POST", "/LengthCheckProtocol", {}), source="::1")[0] for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        assert _send(srv, _request("POST", "/LengthCheckProtocol", {}), source="::1")[0] == 0  # blocked: closed unread
        text = srv.metrics.render().decode()
    assert 'miner_connections_closed_total{reason="per_ip_limit"} 1.0' in text
    assert 'miner_connections_closed_total{reason="blocked"} 1.0' in text
    assert _sources_logged(caplog) == ["::/64"] * 2


def test_ipv4_clients_of_a_dual_stack_socket_stay_apart(validator_wallet, miner_wallet, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A dual-stack IPv6 socket sees IPv4 clients as ::ffff:a.b.c.d: each stays its own source (as its IPv4
    address), not one IPv6 /64 shared by every IPv4 client."""
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::ffff:127.0.0.1", 0))
    with listener, _serving(validator_wallet, miner_wallet, tmp_path, LIMITS, listener=listener) as srv:
        statuses = [_send(srv, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.9")[0] for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        assert _send(srv, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.9")[0] == 0
        assert _send(srv, _request("POST", "/LengthCheckProtocol", {}), source="127.0.0.10")[0] == 401
    assert _sources_logged(caplog) == ["127.0.0.9"] * 2 + ["127.0.0.10"]


def test_header_count_and_size_are_bounded(server: Server) -> None:
    many = {f"x-h{i}": "v" for i in range(40)}
    assert _send(server, _request("POST", "/LengthCheckProtocol", many))[0] == 431
    assert _send(server, _request("POST", "/LengthCheckProtocol", {"x-big": "v" * 20000}), source="127.0.0.6")[0] == 431
    with _connect(server, "127.0.0.6") as sock:  # headers arriving in pieces: h11 stops buffering at the limit
        sock.sendall(b"POST /LengthCheckProtocol HTTP/1.1\r\nX-Big: ")
        for _ in range(5):
            sock.sendall(b"v" * 5000)
            time.sleep(0.05)
        assert _answer(sock)[0] == 400


def test_routes_and_ops_access(server: Server) -> None:
    assert _send(server, _request("GET", "/nope", {}))[0] == 404
    assert _send(server, _request("GET", "/LengthCheckProtocol", {}))[0] == 405
    status, headers, _ = _send(server, _request("POST", "/VideoCompressionProtocol", {}))
    assert status == 501 and headers["bt_header_axon_status_code"] == "501"
    assert _send(server, _request("GET", "/health", {}))[0] == 200
    assert _send(server, _request("GET", "/health", {}), source="127.0.0.7")[0] == 404  # not in server.ops.allow
    assert _send(server, _request("GET", "/health", {"Authorization": "Bearer s3cret"}), source="127.0.0.7")[0] == 200
    assert _send(server, _request("GET", "/health", {}, b"x"))[0] == 413
    # A source is the connection's peer: a forwarded-for header neither moves a caller out of the ops list
    # nor gives one a fresh source (uvicorn trusts the header from loopback unless told not to).
    forwarded = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"}
    assert _send(server, _request("GET", "/health", forwarded))[0] == 200


def test_validators_keep_slots_unauthenticated_callers_cannot_take() -> None:
    slots = Slots(total=3, open_share=1)
    slots.acquire(privileged=False)
    with pytest.raises(Refusal, match="served first"):
        slots.acquire(privileged=False)
    slots.acquire(privileged=True)
    slots.acquire(privileged=True)
    with pytest.raises(Refusal, match="in flight"):
        slots.acquire(privileged=True)
    slots.release(privileged=False)
    slots.acquire(privileged=False)


def test_failed_nonces_never_block_a_real_sender() -> None:
    store, now = NonceStore(retention_ns=60 * NS, per_key=2), time.time_ns()
    for i in range(100):  # forged requests naming future nonces of the sender
        store.reserve("v", "u", now + i, now).fail()
    with pytest.raises(ReplayedRequest, match="already failed"):
        store.reserve("v", "u", now + 5, now)
    held = store.reserve("v", "u", now - 10, now)
    with pytest.raises(ReplayedRequest, match="in use"):
        store.reserve("v", "u", now - 10, now)
    held.release()
    for offset in (-10, -9, -8):  # the sender's own nonces (just before now) are all accepted
        store.reserve("v", "u", now + offset, now).commit()
    with pytest.raises(StaleNonce):  # accepted ones past per_key do raise the floor
        store.reserve("v", "u", now - 20, now)


def test_attack_script_refuses_non_loopback_targets(capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.attack import is_loopback, main

    assert main(["--target", "http://203.0.113.7:8091", "--duration", "1"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert is_loopback("http://127.0.0.1:8091") and is_loopback("http://[::1]:8091") and not is_loopback("http://example.com")
