"""The gate: pure ASGI middleware in front of every route; cheap checks first, the body last.

For each request, in order, answering (and closing the connection) at the first refusal:

1. the source (``ServerLimits.source_of``: an IPv4 address, an IPv6 /64) is not blocked (429; see ``SourceGuard``),
   the header count is bounded (431);
2. the route exists (404) and takes this method (405); bodiless routes (``/files``, ``/health``,
   ``/metrics``, not-served synapses) announce no body (413); ``/health`` and ``/metrics`` only for
   ``[server.ops]`` sources or token (404 otherwise); not-served synapses: 501; ``/files`` URLs
   without a valid, unexpired signature: 403 (the one verification: the route serves the file the
   gate hands on in ``request.state.signed_file``);
3. a slot of ``max_in_flight`` is free; requests that name no admitted validator (and ``/files`` where
   this miner serves none) may use only ``open_in_flight`` of them (503);
4. synapse and ``/v1`` routes: the transport's header checks (``LegacyAuth``/``BtAuth.begin``:
   shape, receiver, freshness, admission by stake, nonce reservation; legacy signatures too) (401/403);
5. ``Content-Length`` within the route's cap (413), at most ``max_body_reads_per_ip`` bodies being
   read from the source (503), then the body read at the ASGI level up to the cap (413) within
   ``body_timeout_s`` (408); then the btauth/1 signature over it (401);
6. the body is JSON of bounded depth (400), and the app runs with the caller in ``request.state.caller`` and
   the body's JSON value, parsed here once, in ``request.state.body_json`` (absent for an empty body).

Every refusal spends a token of the source's bucket and is counted in ``miner_refused_requests``; the
refusal that empties it is answered 429 and blocks the source for ``block_s``: its requests on open
connections get 429, its new connections are closed before a byte is parsed (``miner.server.connections``).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional
from urllib.parse import parse_qs

from fastapi import Request

from miner.auth import AuthError, BtAuth, Caller, Forbidden, LegacyAuth, ReplayedRequest, StaleNonce
from miner.metrics import MinerMetrics
from miner.protocol import NOT_SERVED_SYNAPSES, SERVED_SYNAPSES, legacy_response
from miner.protocol.limits import JsonShapeError, load_json
from miner.server.body import BodyError, ClientGone, read_capped, replay
from miner.server.limits import OpsAccess, ServerLimits
from miner.server.sources import SourceGuard
from miner.storage import InvalidSignature

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
FilesCheck = Callable[[str, str, str], Path]  # (key, exp, sig) -> the file; InvalidSignature otherwise

BTAUTH_ROUTES = {"/v1/upscale": ("POST",), "/v1/length": ("POST",), "/v1/warrant": ("POST",), "/v1/jobs": ("POST",)}
BTAUTH_JOB_PREFIX = "/v1/jobs/"
OPS_ROUTES = ("/health", "/metrics")
FILES_PREFIX = "/files/"


@dataclass(frozen=True)
class Route:
    """What the gate knows of a path: its ``kind`` and the methods it takes."""

    kind: str  # legacy | btauth | not_served | ops | files | unknown
    methods: tuple[str, ...] = ()


def route_of(path: str) -> Route:
    name = path[1:]
    if name in SERVED_SYNAPSES:
        return Route("legacy", ("POST",))
    if name in NOT_SERVED_SYNAPSES:
        return Route("not_served", ("POST",))
    if path in BTAUTH_ROUTES:
        return Route("btauth", BTAUTH_ROUTES[path])
    job_id = path.removeprefix(BTAUTH_JOB_PREFIX)
    if path.startswith(BTAUTH_JOB_PREFIX) and job_id and "/" not in job_id:
        return Route("btauth", ("GET", "POST"))
    if path in OPS_ROUTES:
        return Route("ops", ("GET",))
    if path.startswith(FILES_PREFIX):
        return Route("files", ("GET", "HEAD"))
    return Route("unknown")


class Refusal(Exception):
    """A request answered by the gate: HTTP ``status``, metric ``reason``, message for the caller."""

    def __init__(self, status: int, reason: str, message: str, *, charge: bool = True) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.charge = status, reason, message, charge


class Slots:
    """Requests in flight: ``total`` at most, of which requests without a validator's claim get ``open``."""

    def __init__(self, total: int, open_share: int) -> None:
        self.total, self.open_share = total, open_share
        self.used = self.open_used = 0

    def acquire(self, privileged: bool) -> None:
        if self.used >= self.total:
            raise Refusal(503, "saturated", f"miner busy: {self.total} requests in flight", charge=False)
        if not privileged and self.open_used >= self.open_share:
            raise Refusal(503, "saturated", "miner busy: requests of admitted validators are served first",
                          charge=False)
        self.used += 1
        self.open_used += 0 if privileged else 1

    def release(self, privileged: bool) -> None:
        self.used -= 1
        self.open_used -= 0 if privileged else 1


def source_guard(limits: ServerLimits, metrics: MinerMetrics) -> SourceGuard:
    """The per-source refusal budget of ``limits`` (shared by the gate and the connection guard)."""
    return SourceGuard(burst=limits.refusal_burst, rate_per_s=limits.refusal_rate_per_s, block_s=limits.block_s,
                       max_sources=limits.max_sources, on_block=metrics.blocked_sources.inc)


def gate_caller(request: Request) -> Caller:
    """FastAPI dependency: the caller the gate proved (every synapse and /v1 route is behind the gate)."""
    return request.state.caller


def gate_file(request: Request) -> Path:
    """FastAPI dependency: the file of the ``/files`` URL whose signature the gate verified."""
    return request.state.signed_file


def gate_json(request: Request, empty: Any) -> Any:
    """The body's JSON value as the gate parsed it (once, depth-bounded); ``empty`` when there was no body.
    The synapse and /v1 routes build their body dependencies on it."""
    return getattr(request.state, "body_json", empty)


class Gate:
    """The middleware; ``files_check(key, exp, sig)`` verifies a ``/files`` URL (``LocalStorage.verify``), where
    this miner serves them."""

    def __init__(self, app: ASGIApp, *, legacy: LegacyAuth, btauth: BtAuth, limits: ServerLimits, ops: OpsAccess,
                 metrics: MinerMetrics, sources: Optional[SourceGuard] = None,
                 files_check: Optional[FilesCheck] = None) -> None:
        self.app, self.legacy, self.btauth, self.limits, self.ops = app, legacy, btauth, limits, ops
        self.metrics = metrics
        self.files_check = files_check
        self.slots = Slots(limits.max_in_flight, limits.open_in_flight)
        self.sources = sources if sources is not None else source_guard(limits, metrics)
        self._reading: Counter[str] = Counter()  # bodies being read, per source

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = str(client[0]) if client else "unknown"
        source = self.limits.source_of(ip)
        route = route_of(scope["path"])
        if self.sources.blocked(source):
            self.metrics.refused.labels("rate_limited").inc()
            await _answer(send, route.kind, 429, "too many refused requests from this address; retry later")
            return
        try:
            headers = _headers(scope, self.limits.max_header_count, self.limits.max_header_bytes)
            privileged = self._screen(scope, route, headers, ip)
            self.slots.acquire(privileged)
        except Refusal as refusal:
            await self._refuse(send, route.kind, source, refusal)
            return
        try:
            if route.kind in ("legacy", "btauth"):
                await self._authenticated(scope, receive, send, route, headers, source)
            else:
                await self.app(scope, receive, send)
        finally:
            self.slots.release(privileged)

    def _screen(self, scope: dict[str, Any], route: Route, headers: Mapping[str, str], ip: str) -> bool:
        """Checks that need no body and no crypto; whether the request claims priority (``ip``: the client's own
        address, which ``server.ops.allow`` is matched against)."""
        if route.kind == "unknown":
            raise Refusal(404, "not_found", "not found")
        if scope["method"] not in route.methods:
            raise Refusal(405, "method", f"method {scope['method']} not allowed here")
        if route.kind in ("legacy", "btauth"):
            auth = self.legacy if route.kind == "legacy" else self.btauth
            return auth.admitted(headers.get(auth.hotkey_header))
        if _announces_body(headers):
            raise Refusal(413, "too_large", "this route takes no request body")
        if route.kind == "not_served":
            raise Refusal(501, "not_served", f"{scope['path'][1:]} is not served by this miner (upscaling only)")
        if route.kind == "ops":
            if not (self.ops.source_allowed(ip) or _bearer_ok(headers, self.ops.token)):
                raise Refusal(404, "ops_denied", "not found")
            return True
        return self._files_signed(scope)

    def _files_signed(self, scope: dict[str, Any]) -> bool:
        """A ``/files`` URL's signature, verified once: 403 if bad, else its file handed on to the route."""
        if self.files_check is None:
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        key = scope["path"][len(FILES_PREFIX):]  # percent-decoded once by the server: the key the URL was signed for
        try:
            path = self.files_check(key, query.get("exp", [""])[0], query.get("sig", [""])[0])
        except InvalidSignature as exc:
            raise Refusal(403, "files_denied", str(exc)) from None
        scope.setdefault("state", {})["signed_file"] = path
        return True

    async def _authenticated(self, scope: dict[str, Any], receive: Any, send: Any, route: Route,
                             headers: Mapping[str, str], source: str) -> None:
        auth = self.legacy if route.kind == "legacy" else self.btauth
        cap = self.limits.synapse_max_bytes if route.kind == "legacy" else self.limits.json_max_bytes
        try:
            target = scope["path"] if route.kind == "legacy" else _target(scope)
            pending = auth.begin(scope["method"], target, headers)
        except AuthError as exc:
            await self._refuse(send, route.kind, source, Refusal(exc.status, _auth_reason(exc), exc.reason),
                               hotkey=headers.get(auth.hotkey_header))
            return
        try:
            body = await self._body(receive, headers, source, cap)
            try:
                caller = pending.complete(body)
            except AuthError as exc:
                raise Refusal(exc.status, _auth_reason(exc), exc.reason) from None
            state: dict[str, Any] = {"caller": caller}
            if body:
                try:
                    state["body_json"] = load_json(body, max_depth=self.limits.json_max_depth)
                except JsonShapeError as exc:
                    raise Refusal(400, "bad_body", str(exc), charge=False) from None
        except ClientGone as gone:
            self.metrics.refused.labels(gone.reason).inc()
            return
        except Refusal as refusal:
            await self._refuse(send, route.kind, source, refusal, hotkey=pending.caller.hotkey)
            return
        finally:
            pending.close()
        scope.setdefault("state", {}).update(state)
        await self.app(scope, replay(body, receive), send)

    async def _body(self, receive: Any, headers: Mapping[str, str], source: str, cap: int) -> bytes:
        """The body (at most ``cap`` bytes, within the deadline); a source reads few bodies at once."""
        declared = _declared_length(headers)
        if declared is not None and declared > cap:
            raise Refusal(413, "too_large", f"Content-Length {declared} exceeds this route's {cap}-byte limit")
        if self._reading[source] >= self.limits.max_body_reads_per_ip:
            raise Refusal(503, "saturated", f"more than {self.limits.max_body_reads_per_ip} bodies in flight "
                                            "from this address")
        self._reading[source] += 1
        try:
            return await read_capped(receive, cap=cap, timeout_s=self.limits.body_timeout_s)
        except BodyError as exc:
            if exc.status is None:
                raise
            raise Refusal(exc.status, exc.reason, str(exc)) from None
        finally:
            self._reading[source] -= 1
            if not self._reading[source]:
                del self._reading[source]

    async def _refuse(self, send: Any, kind: str, source: str, refusal: Refusal,
                      hotkey: Optional[str] = None) -> None:
        self.metrics.refused.labels(refusal.reason).inc()
        if refusal.charge and self.sources.refused(source, refusal.reason):
            refusal = Refusal(429, "rate_limited", f"{refusal.message}; too many refused requests from this "
                                                   f"address: blocked for {self.limits.block_s:g} s")
        if kind in ("legacy", "btauth") and refusal.status in (401, 403):
            log.debug("request refused", extra={"fields": {
                "route_kind": kind, "status": refusal.status, "reason": refusal.reason, "source": source,
                "hotkey": (hotkey or "")[:64], "message": refusal.message[:200]}})
        await _answer(send, kind, refusal.status, refusal.message)


def _auth_reason(exc: AuthError) -> str:
    if isinstance(exc, Forbidden):
        return "forbidden"
    if isinstance(exc, (ReplayedRequest, StaleNonce)):
        return "stale_or_replayed"
    return "unauthenticated"


def _headers(scope: dict[str, Any], max_count: int, max_bytes: int) -> dict[str, str]:
    """The headers by lower-case name; 431 past the count or total size (h11 bounds only headers that
    arrive in pieces: a complete oversized block read at once passes it)."""
    raw = scope.get("headers") or []
    if len(raw) > max_count:
        raise Refusal(431, "too_many_headers", f"more than {max_count} request headers")
    if sum(len(k) + len(v) for k, v in raw) > max_bytes:
        raise Refusal(431, "too_many_headers", f"request headers exceed {max_bytes} bytes")
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def _target(scope: dict[str, Any]) -> str:
    """The request target as sent (raw path and query): what btauth/1 signs."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _declared_length(headers: Mapping[str, str]) -> Optional[int]:
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise Refusal(400, "bad_request", "Content-Length is not a number")
    return int(raw)


def _announces_body(headers: Mapping[str, str]) -> bool:
    if "transfer-encoding" in headers:
        return True
    raw = headers.get("content-length", "0").strip()
    return not raw.isdigit() or int(raw) > 0


def _bearer_ok(headers: Mapping[str, str], token: str) -> bool:
    given = headers.get("authorization", "")
    return bool(token) and hmac.compare_digest(given.encode("latin-1"), f"Bearer {token}".encode("ascii"))


async def _answer(send: Any, kind: str, status: int, message: str) -> None:
    """A refusal in the route's error format (legacy: bittensor status headers), closing the connection."""
    if kind in ("legacy", "not_served"):
        body, headers = legacy_response(None, status, message)
    else:
        key = "error" if kind == "btauth" else "detail"
        body, headers = json.dumps({key: message}).encode(), {"content-type": "application/json"}
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw_headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
