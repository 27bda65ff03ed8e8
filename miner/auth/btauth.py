"""btauth/1 (bittensor 11 ``bittensor.http_auth``): server-side verification and client-side signing.

Server, in two steps around the body::

    claim = verifier.check_headers(request_headers)                  # before any body byte: 401s
    reservation = verifier.nonces.reserve(claim.hotkey, BTAUTH_STREAM, claim.nonce, now)
    verifier.check_signature(headers, body, method="POST", path="/v1/upscale")   # BadSignature/MalformedRequest

    hotkey = verifier.verify(headers, body, method="POST", path="/v1/upscale")    # both at once

Client::

    headers = sign_btauth(wallet, miner_hotkey, "POST", "/v1/upscale", body)   # X-Bittensor-* headers

The receiver header is required (a request signed for another hotkey, or for none, is refused).
The signature covers the body's SHA-256, so it is checked after the (capped) body is read; the
nonce is reserved before, so one nonce is verified at most once (``miner.auth.nonces``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from bittensor import http_auth

from miner.auth import errors
from miner.auth.nonces import NonceStore

BTAUTH_STREAM = "btauth/1"  # the nonce store's stream key: btauth nonces are per hotkey only

_NS = 1_000_000_000
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


@dataclass(frozen=True)
class BtAuthClaim:
    """Who a request says it is from, and its nonce (not yet proven)."""

    hotkey: str
    nonce: int


class _Accepted:
    """The nonce store ``http_auth.verify`` writes to: the caller's reservation already holds the nonce."""

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        return True


class BtAuthVerifier:
    """Verifies btauth/1 requests addressed to ``own_hotkey``; one instance per server (holds the nonces)."""

    def __init__(self, own_hotkey: str, settings: Optional[BtAuthSettings] = None) -> None:
        self.own_hotkey = own_hotkey
        self.settings = settings or BtAuthSettings()
        self.nonces = NonceStore(int((self.settings.max_age_s + self.settings.allowed_skew_s) * _NS))

    def check_headers(self, headers: Mapping[str, str], now_ns: Optional[int] = None) -> BtAuthClaim:
        """The claimed sender and nonce, or an ``AuthError`` (401): shape, receiver, freshness."""
        h = {k.lower(): v for k, v in headers.items()}
        if h.get(http_auth.HEADER_VERSION.lower()) != http_auth.VERSION:
            raise errors.MalformedRequest(f"missing or unsupported {http_auth.HEADER_VERSION} "
                                          f"(expected {http_auth.VERSION!r})")
        hotkey = h.get(http_auth.HEADER_HOTKEY.lower())
        raw_nonce = h.get(http_auth.HEADER_NONCE.lower(), "")
        signature = h.get(http_auth.HEADER_SIGNATURE.lower())
        if not hotkey or not signature:
            raise errors.MalformedRequest(f"missing {http_auth.HEADER_HOTKEY} or {http_auth.HEADER_SIGNATURE}")
        if not raw_nonce.isascii() or not raw_nonce.isdigit() or len(raw_nonce) > 20:
            raise errors.MalformedRequest(f"missing {http_auth.HEADER_NONCE} or not a decimal integer")
        receiver = h.get(http_auth.HEADER_RECEIVER.lower())
        if receiver is None:
            raise errors.WrongReceiver(f"missing {http_auth.HEADER_RECEIVER}: this server requires "
                                       "receiver-bound requests")
        if receiver != self.own_hotkey:
            raise errors.WrongReceiver("request was signed for a different receiving hotkey")
        nonce = int(raw_nonce)
        now = time.time_ns() if now_ns is None else now_ns
        if now - nonce > self.settings.max_age_s * _NS:
            raise errors.StaleNonce(f"nonce is older than the {self.settings.max_age_s:g}s freshness window")
        if nonce - now > self.settings.allowed_skew_s * _NS:
            raise errors.StaleNonce(f"nonce is more than {self.settings.allowed_skew_s:g}s in the future")
        return BtAuthClaim(hotkey=hotkey, nonce=nonce)

    def check_signature(self, headers: Mapping[str, str], body: bytes, *, method: str, path: str,
                        now_ns: Optional[int] = None) -> str:
        """The sender's hotkey once the signature over method, path and body verifies; else an ``AuthError``."""
        try:
            caller = http_auth.verify(
                headers, body, method=method, path=path, self_hotkey_ss58=self.own_hotkey,
                max_age=self.settings.max_age_s, allowed_skew=self.settings.allowed_skew_s,
                require_receiver=True, nonce_store=_Accepted(), now_ns=now_ns,
            )
        except http_auth.AuthError as exc:
            raise _ERRORS.get(type(exc), errors.Unauthorized)(str(exc)) from None
        return caller.hotkey_ss58

    def verify(self, headers: Mapping[str, str], body: bytes, *, method: str, path: str,
               now_ns: Optional[int] = None) -> str:
        """Both steps at once: the sender's hotkey, or an ``AuthError`` (401) naming what failed."""
        now = time.time_ns() if now_ns is None else now_ns
        claim = self.check_headers(headers, now)
        reservation = self.nonces.reserve(claim.hotkey, BTAUTH_STREAM, claim.nonce, now)
        try:
            hotkey = self.check_signature(headers, body, method=method, path=path, now_ns=now)
        except errors.AuthError:
            reservation.fail()
            raise
        reservation.commit()
        return hotkey


def sign_btauth(wallet: Any, receiver_hotkey: str, method: str, path: str, body: bytes = b"",
                nonce_ns: Optional[int] = None) -> dict[str, str]:
    """btauth/1 headers for a request to ``receiver_hotkey`` (``wallet``: a bittensor 11 wallet or keypair)."""
    return http_auth.sign(wallet, method=method, path=path, body=body, receiver_ss58=receiver_hotkey,
                          nonce_ns=nonce_ns)
