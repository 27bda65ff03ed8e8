"""Verification of bittensor-10 synapse requests (what a bittensor 10.1.0 axon checks, and stricter).

    verifier = LegacyVerifier(own_hotkey)
    parsed = verifier.check_headers("/LengthCheckProtocol", headers)   # before any body byte: 401s
    reservation = verifier.nonces.reserve(parsed.dendrite_hotkey, parsed.dendrite_uuid, parsed.dendrite_nonce, now)
    verifier.check_signature(parsed)                                    # BadSignature (still no body)

    request = verifier.verify("/LengthCheckProtocol", headers, body)   # all of it at once, then the body

Header checks, in order: the auth headers are present and parse; the receiver
(``bt_header_axon_hotkey``) is our hotkey; ``computed_body_hash`` equals the body hash of the
route's synapse; the nonce is within the freshness window (``nonce_delta_s`` + the caller's timeout,
capped at ``max_timeout_s``, as bittensor 10) and at most ``future_skew_s`` ahead; a signature is
present. Then the sr25519 signature over
``{nonce}.{dendrite_hotkey}.{our_hotkey}.{uuid}.{body_hash}`` verifies; the (hotkey, uuid, nonce)
is reserved before that and never accepted twice.

No Vidaio synapse has ``required_hash_fields``, so its body hash is a constant of its class (the
SHA3-256 of ``""``) and the signature covers no byte of the body: everything is verified from the
headers, before the body is read. A served synapse with hash fields would need its body first,
which this verifier refuses to pretend (``ValueError`` at start-up).
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
from miner.protocol.models import SERVED_SYNAPSES, Synapse
from miner.protocol.wire import (
    LegacyHeaders, WireError, class_body_hash, parse_legacy_request, signature_message, synapse_class,
)

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
        hashed = [name for name, cls in SERVED_SYNAPSES.items() if cls.required_hash_fields]
        if hashed:
            raise ValueError(f"synapses {hashed} hash body fields; the legacy verifier checks signatures "
                             "before the body and cannot serve them")
        self.own_hotkey = own_hotkey
        self.settings = settings or LegacySettings()
        retention_s = self.settings.nonce_delta_s + self.settings.max_timeout_s + self.settings.future_skew_s
        self.nonces = NonceStore(int(retention_s * _NS), self.settings.replay_per_key, self.settings.replay_max_keys)

    def check_headers(self, route: str, headers: Mapping[str, str], now_ns: Optional[int] = None) -> LegacyHeaders:
        """The parsed ``bt_header_*`` values, or an ``AuthError`` (401; 404 for an unserved route)."""
        try:
            cls = synapse_class(route)
            parsed = LegacyHeaders.parse(headers)
        except WireError as exc:
            raise MalformedRequest(exc.message) from None
        if not parsed.dendrite_hotkey or parsed.dendrite_nonce is None or not parsed.dendrite_uuid:
            raise MalformedRequest("missing bt_header_dendrite_hotkey, _nonce or _uuid")
        if parsed.axon_hotkey != self.own_hotkey:
            raise WrongReceiver(f"request is addressed to {parsed.axon_hotkey}, not to this miner ({self.own_hotkey})")
        expected_hash = class_body_hash(cls)
        if parsed.computed_body_hash != expected_hash:
            raise BodyHashMismatch(f"computed_body_hash {str(parsed.computed_body_hash)[:80]!r} does not match the "
                                   f"body ({expected_hash})")
        self._check_fresh(parsed.dendrite_nonce, parsed.timeout, time.time_ns() if now_ns is None else now_ns)
        if not parsed.dendrite_signature:
            raise BadSignature("missing bt_header_dendrite_signature")
        return parsed

    def check_signature(self, route: str, parsed: LegacyHeaders) -> None:
        """``BadSignature`` unless the sender's hotkey signed these headers for us."""
        hotkey = str(parsed.dendrite_hotkey)
        message = signature_message(int(parsed.dendrite_nonce or 0), hotkey, self.own_hotkey,
                                    str(parsed.dendrite_uuid), class_body_hash(synapse_class(route)))
        if not _signature_ok(hotkey, message, str(parsed.dendrite_signature)):
            raise BadSignature(f"signature does not verify for hotkey {hotkey[:64]}")

    def verify(self, route: str, headers: Mapping[str, str], body: bytes,
               now_ns: Optional[int] = None) -> VerifiedRequest:
        """Every check at once, then the body: the verified request, or an ``AuthError`` (401, 400)."""
        now = time.time_ns() if now_ns is None else now_ns
        parsed = self.check_headers(route, headers, now)
        reservation = self.nonces.reserve(str(parsed.dendrite_hotkey), str(parsed.dendrite_uuid),
                                          int(parsed.dendrite_nonce or 0), now)
        try:
            self.check_signature(route, parsed)
        except BadSignature:
            reservation.fail()
            raise
        reservation.commit()
        try:
            synapse, _ = parse_legacy_request(route, headers, body)
        except WireError as exc:
            raise BadBody(exc.message) from None
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
    except (ValueError, TypeError):
        return False
