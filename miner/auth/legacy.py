"""Verification of bittensor-10 synapse requests (what a bittensor 10.1.0 axon checks, and stricter).

    verifier = LegacyVerifier(own_hotkey)
    request = verifier.verify("/LengthCheckProtocol", headers, body)   # or raises an AuthError (401/400)
    request.synapse, request.headers.dendrite_hotkey

Checks, in order: the auth headers are present and parse; the receiver (``bt_header_axon_hotkey``)
is our hotkey; ``computed_body_hash`` equals the hash of the body; the nonce is within the freshness
window (``nonce_delta_s`` + the caller's timeout, capped at ``max_timeout_s``, as bittensor 10) and
at most ``future_skew_s`` ahead; the sr25519 signature over
``{nonce}.{dendrite_hotkey}.{our_hotkey}.{uuid}.{body_hash}`` verifies (a missing signature fails,
unlike bittensor 10); the (hotkey, uuid, nonce) was never accepted before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Optional

from bittensor.keyfiles import Keypair

from miner.auth.errors import (
    BadBody, BadSignature, BodyHashMismatch, MalformedRequest, StaleNonce, WrongReceiver,
)
from miner.auth.nonces import NonceStore
from miner.protocol.models import Synapse
from miner.protocol.wire import LegacyHeaders, WireError, body_hash, parse_legacy_request, signature_message

_NS = 1_000_000_000


@dataclass(frozen=True)
class LegacySettings:
    """Freshness and replay-store limits (``[auth]`` in the miner configuration)."""

    nonce_delta_s: float = 4.0       # bittensor 10's ALLOWED_DELTA: base age a nonce may have
    max_timeout_s: float = 600.0     # the caller's timeout header widens the window up to this
    future_skew_s: float = 30.0      # how far ahead of our clock a nonce may be
    replay_per_key: int = 1024       # nonces remembered per (hotkey, uuid)
    replay_max_keys: int = 10_000    # (hotkey, uuid) pairs remembered


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose signature, receiver, body hash and nonce checked out."""

    synapse: Synapse
    headers: LegacyHeaders

    @property
    def hotkey(self) -> str:
        return str(self.headers.dendrite_hotkey)


class LegacyVerifier:
    """Verifies legacy synapse calls addressed to ``own_hotkey``; one instance per server (holds the nonces)."""

    def __init__(self, own_hotkey: str, settings: Optional[LegacySettings] = None) -> None:
        self.own_hotkey = own_hotkey
        self.settings = settings or LegacySettings()
        retention_s = self.settings.nonce_delta_s + self.settings.max_timeout_s + self.settings.future_skew_s
        self.nonces = NonceStore(int(retention_s * _NS), self.settings.replay_per_key, self.settings.replay_max_keys)

    def verify(self, route: str, headers: Mapping[str, str], body: bytes,
               now_ns: Optional[int] = None) -> VerifiedRequest:
        """The verified request, or an ``AuthError`` (401, or 400 for a body that is no synapse)."""
        try:
            synapse, parsed = parse_legacy_request(route, headers, body)
        except WireError as exc:
            raise (MalformedRequest(exc.message) if exc.status == 401 else BadBody(exc.message)) from None
        hotkey, nonce, uuid = parsed.dendrite_hotkey, parsed.dendrite_nonce, parsed.dendrite_uuid
        if not hotkey or nonce is None or not uuid:
            raise MalformedRequest("missing bt_header_dendrite_hotkey, _nonce or _uuid")
        if parsed.axon_hotkey != self.own_hotkey:
            raise WrongReceiver(f"request is addressed to {parsed.axon_hotkey}, not to this miner ({self.own_hotkey})")
        expected_hash = body_hash(synapse)
        if parsed.computed_body_hash != expected_hash:
            raise BodyHashMismatch(f"computed_body_hash {parsed.computed_body_hash!r} does not match the body ({expected_hash})")
        now = time.time_ns() if now_ns is None else now_ns
        self._check_fresh(nonce, parsed.timeout, now)
        if not parsed.dendrite_signature:
            raise BadSignature("missing bt_header_dendrite_signature")
        message = signature_message(nonce, hotkey, self.own_hotkey, uuid, expected_hash)
        if not _signature_ok(hotkey, message, parsed.dendrite_signature):
            raise BadSignature(f"signature does not verify for hotkey {hotkey}")
        self.nonces.check_and_record(hotkey, uuid, nonce, now)
        return VerifiedRequest(synapse=synapse, headers=parsed)

    def _check_fresh(self, nonce: int, timeout: Optional[float], now_ns: int) -> None:
        s = self.settings
        window_s = s.nonce_delta_s + min(max(timeout or 0.0, 0.0), s.max_timeout_s)
        age_s = (now_ns - nonce) / _NS
        if age_s > window_s:
            raise StaleNonce(f"nonce is {age_s:.2f} s old; acceptable age is {window_s:.2f} s")
        if -age_s > s.future_skew_s:
            raise StaleNonce(f"nonce is {-age_s:.2f} s in the future; allowed clock skew is {s.future_skew_s:.2f} s")


def _signature_ok(hotkey: str, message: str, signature_hex: str) -> bool:
    try:
        signature = bytes.fromhex(signature_hex.removeprefix("0x"))
        return bool(Keypair(ss58_address=hotkey).verify(message.encode(), signature))
    except ValueError:
        return False
