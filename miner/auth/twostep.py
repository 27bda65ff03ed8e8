"""Authentication in two steps around the body, for both transports: ``begin`` from the headers
alone, ``complete`` once the (capped) body is read. The server's gate (``miner.server.gate``) runs them.

    auth = LegacyAuth(own_hotkey, registry, min_stake=1000.0)      # or BtAuth(...)
    pending = auth.begin("POST", "/LengthCheckProtocol", headers)  # AuthError: nothing of the body was read
    try:
        body = ...                                                  # read at most the route's cap
        caller = pending.complete(body)                             # AuthError (btauth: the body's signature)
    finally:
        pending.close()                                             # frees a nonce no signature was checked for

``begin`` checks, cheapest first: the auth headers' shape, the receiver, the nonce's freshness, the
claimed hotkey's admission (registered, permit, stake: ``check_access``, 403), then reserves the
nonce. A legacy signature covers no body byte, so it is verified in ``begin`` too; a btauth/1
signature covers the body's hash and is verified in ``complete``. Either way a nonce is verified at
most once (see ``miner.auth.nonces`` for why a forged request cannot block a real validator).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Mapping, Optional

from miner.auth.access import check_access
from miner.auth.btauth import BTAUTH_STREAM, BtAuthSettings, BtAuthVerifier
from miner.auth.caller import Caller, Transport
from miner.auth.errors import AuthError
from miner.auth.legacy import LegacySettings, LegacyVerifier
from miner.auth.nonces import Reservation
from miner.chain.registry import ValidatorInfo, ValidatorRegistry


class Pending:
    """An admitted request waiting for its body; ``complete`` proves it, ``close`` always ends it."""

    def __init__(self, caller: Caller, reservation: Optional[Reservation] = None,
                 verify_body: Optional[Callable[[bytes], object]] = None) -> None:
        self.caller = caller
        self._reservation = reservation
        self._verify_body = verify_body

    def complete(self, body: bytes) -> Caller:
        """The proven caller, or an ``AuthError`` (the nonce is then marked failed, never verified again)."""
        if self._verify_body is not None and self._reservation is not None:
            try:
                self._verify_body(body)
            except AuthError:
                self._reservation.fail()
                raise
            self._reservation.commit()
        return self.caller

    def close(self) -> None:
        if self._reservation is not None:
            self._reservation.release()


class _Admission:
    """Registry and minimum stake shared by both transports."""

    transport: Transport

    def __init__(self, registry: ValidatorRegistry, min_stake: float) -> None:
        self.registry = registry
        self.min_stake = min_stake

    def admitted(self, hotkey: Optional[str]) -> bool:
        """Whether ``hotkey`` (a claim, unproven) names an admitted validator: the gate's priority test."""
        if not hotkey:
            return False
        info = self.registry.lookup(hotkey)
        return info is not None and info.permit and info.stake >= self.min_stake

    def _caller(self, info: ValidatorInfo) -> Caller:
        return Caller(hotkey=info.hotkey, transport=self.transport, stake=info.stake, permit=info.permit, uid=info.uid)


class LegacyAuth(_Admission):
    """bittensor-10 synapse requests (``bt_header_*``): fully verified from the headers."""

    transport: Transport = "legacy"
    hotkey_header = "bt_header_dendrite_hotkey"

    def __init__(self, own_hotkey: str, registry: ValidatorRegistry, min_stake: float = 0.0,
                 settings: Optional[LegacySettings] = None) -> None:
        super().__init__(registry, min_stake)
        self.verifier = LegacyVerifier(own_hotkey, settings)

    def begin(self, method: str, path: str, headers: Mapping[str, str]) -> Pending:
        now = time.time_ns()
        parsed = self.verifier.check_headers(path, headers, now)
        info = check_access(self.registry, str(parsed.dendrite_hotkey), self.min_stake)
        reservation = self.verifier.nonces.reserve(str(parsed.dendrite_hotkey), str(parsed.dendrite_uuid),
                                                   int(parsed.dendrite_nonce or 0), now)
        try:
            self.verifier.check_signature(path, parsed)
        except AuthError:
            reservation.fail()
            raise
        reservation.commit()
        return Pending(self._caller(info))


class BtAuth(_Admission):
    """btauth/1 requests (``X-Bittensor-*``): the signature covers the body, so it is checked after it."""

    transport: Transport = "btauth"
    hotkey_header = "x-bittensor-hotkey"

    def __init__(self, own_hotkey: str, registry: ValidatorRegistry, min_stake: float = 0.0,
                 settings: Optional[BtAuthSettings] = None) -> None:
        super().__init__(registry, min_stake)
        self.verifier = BtAuthVerifier(own_hotkey, settings)

    def begin(self, method: str, path: str, headers: Mapping[str, str]) -> Pending:
        now = time.time_ns()
        claim = self.verifier.check_headers(headers, now)
        info = check_access(self.registry, claim.hotkey, self.min_stake)
        reservation = self.verifier.nonces.reserve(claim.hotkey, BTAUTH_STREAM, claim.nonce, now)
        verify_body = functools.partial(self.verifier.check_signature, headers, method=method, path=path)
        return Pending(self._caller(info), reservation, verify_body)
