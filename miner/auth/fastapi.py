"""FastAPI dependencies that authenticate a request and admit only validators, returning a ``Caller``.

    legacy = LegacyAuth(own_hotkey, registry, min_stake=1000.0)
    btauth = BtAuth(own_hotkey, registry, min_stake=1000.0)

    @app.post("/LengthCheckProtocol")
    async def length(request: Request, caller: Caller = Depends(legacy)): ...

    @app.post("/v1/length")
    async def length_v1(caller: Caller = Depends(btauth)): ...

    install_auth_error_handler(app)   # error bodies: {"message": ...} (legacy), {"error": ...} (btauth)

Failures raise ``AuthFailure`` (an ``HTTPException``): 401 for a request that does not prove its
sender, receiver and freshness, 403 for a proven hotkey that is not an admitted validator, 400 for
a legacy body that is no synapse. Legacy failures carry the ``bt_header_axon_status_code`` /
``_status_message`` headers a bittensor 10 dendrite reads, so even FastAPI's default handler answers
in a form the dendrite understands; the installed handler also writes the expected JSON body.
The legacy dependency leaves the verified request in ``request.state.legacy_request``.
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from miner.auth.access import check_access
from miner.auth.btauth import BtAuthSettings, BtAuthVerifier
from miner.auth.caller import Caller, Transport
from miner.auth.errors import AuthError
from miner.auth.legacy import LegacySettings, LegacyVerifier
from miner.chain.registry import ValidatorRegistry
from miner.protocol.wire import legacy_response

log = logging.getLogger(__name__)


class AuthFailure(HTTPException):
    """A refused request, answered in its transport's error format."""

    def __init__(self, transport: Transport, error: AuthError, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(status_code=error.status, detail=error.reason, headers=headers)
        self.transport = transport
        self.reason = error.reason


def _refuse(transport: Transport, request: Request, error: AuthError, hotkey: Optional[str]) -> AuthFailure:
    log.info("request refused", extra={"fields": {
        "transport": transport, "route": request.url.path, "status": error.status,
        "error": type(error).__name__, "hotkey": hotkey, "reason": error.reason}})
    if transport == "legacy":
        _, headers = legacy_response(None, error.status, error.reason)
        return AuthFailure(transport, error, headers)
    return AuthFailure(transport, error)


class LegacyAuth:
    """Dependency for the bittensor-10 synapse routes (``bt_header_*`` signed requests)."""

    def __init__(self, own_hotkey: str, registry: ValidatorRegistry, min_stake: float = 0.0,
                 settings: Optional[LegacySettings] = None) -> None:
        self.verifier = LegacyVerifier(own_hotkey, settings)
        self.registry = registry
        self.min_stake = min_stake

    async def __call__(self, request: Request) -> Caller:
        body = await request.body()
        hotkey = request.headers.get("bt_header_dendrite_hotkey")
        try:
            verified = self.verifier.verify(request.url.path, request.headers, body)
            info = check_access(self.registry, verified.hotkey, self.min_stake)
        except AuthError as exc:
            raise _refuse("legacy", request, exc, hotkey) from None
        request.state.legacy_request = verified
        return Caller(hotkey=info.hotkey, transport="legacy", stake=info.stake, permit=info.permit, uid=info.uid)


class BtAuth:
    """Dependency for the btauth/1 JSON routes (``X-Bittensor-*`` signed requests)."""

    def __init__(self, own_hotkey: str, registry: ValidatorRegistry, min_stake: float = 0.0,
                 settings: Optional[BtAuthSettings] = None) -> None:
        self.verifier = BtAuthVerifier(own_hotkey, settings)
        self.registry = registry
        self.min_stake = min_stake

    async def __call__(self, request: Request) -> Caller:
        body = await request.body()
        hotkey = request.headers.get("x-bittensor-hotkey")
        try:
            hotkey = self.verifier.verify(request.headers, body, method=request.method, path=request.url.path)
            info = check_access(self.registry, hotkey, self.min_stake)
        except AuthError as exc:
            raise _refuse("btauth", request, exc, hotkey) from None
        return Caller(hotkey=info.hotkey, transport="btauth", stake=info.stake, permit=info.permit, uid=info.uid)


async def _auth_failure_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthFailure)
    if exc.transport == "legacy":
        return JSONResponse({"message": exc.reason}, status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.reason}, status_code=exc.status_code)


def install_auth_error_handler(app: FastAPI) -> None:
    """Answer ``AuthFailure`` as ``{"message": ...}`` + status headers (legacy) or ``{"error": ...}`` (btauth)."""
    app.add_exception_handler(AuthFailure, _auth_failure_response)
