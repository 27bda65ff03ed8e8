"""btauth/1 (bittensor 11 ``bittensor.http_auth``): server-side verification and client-side signing.

Server::

    verifier = BtAuthVerifier(own_hotkey)
    hotkey = verifier.verify(request.headers, body, method="POST", path="/v1/upscale")  # or AuthError 401

Client::

    headers = sign_btauth(wallet, miner_hotkey, "POST", "/v1/upscale", body)   # X-Bittensor-* headers

The receiver header is required (a request signed for another hotkey, or for none, is refused);
replays are refused per (hotkey, nonce) by an ``InMemoryNonceStore`` kept for the freshness window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from bittensor import http_auth

from miner.auth import errors

_ERRORS: dict[type[Exception], type[errors.AuthError]] = {
    http_auth.MalformedAuth: errors.MalformedRequest,
    http_auth.WrongReceiver: errors.WrongReceiver,
    http_auth.StaleRequest: errors.StaleNonce,
    http_auth.ReplayedRequest: errors.ReplayedRequest,
    http_auth.BadSignature: errors.BadSignature,
}


@dataclass(frozen=True)
class BtAuthSettings:
    """Freshness window of btauth/1 nonces (``[auth]`` in the miner configuration)."""

    max_age_s: float = http_auth.DEFAULT_MAX_AGE
    allowed_skew_s: float = http_auth.DEFAULT_ALLOWED_SKEW


class BtAuthVerifier:
    """Verifies btauth/1 requests addressed to ``own_hotkey``; one instance per server (holds the nonces)."""

    def __init__(self, own_hotkey: str, settings: Optional[BtAuthSettings] = None) -> None:
        self.own_hotkey = own_hotkey
        self.settings = settings or BtAuthSettings()
        self.nonces = http_auth.InMemoryNonceStore(retention=self.settings.max_age_s + self.settings.allowed_skew_s)

    def verify(self, headers: Mapping[str, str], body: bytes, *, method: str, path: str,
               now_ns: Optional[int] = None) -> str:
        """The sender's hotkey, or an ``AuthError`` (401) naming what failed."""
        try:
            caller = http_auth.verify(
                headers, body, method=method, path=path, self_hotkey_ss58=self.own_hotkey,
                max_age=self.settings.max_age_s, allowed_skew=self.settings.allowed_skew_s,
                require_receiver=True, nonce_store=self.nonces, now_ns=now_ns,
            )
        except http_auth.AuthError as exc:
            raise _ERRORS.get(type(exc), errors.Unauthorized)(str(exc)) from None
        return caller.hotkey_ss58


def sign_btauth(wallet: Any, receiver_hotkey: str, method: str, path: str, body: bytes = b"",
                nonce_ns: Optional[int] = None) -> dict[str, str]:
    """btauth/1 headers for a request to ``receiver_hotkey`` (``wallet``: a bittensor 11 wallet or keypair)."""
    return http_auth.sign(wallet, method=method, path=path, body=body, receiver_ss58=receiver_hotkey,
                          nonce_ns=nonce_ns)
