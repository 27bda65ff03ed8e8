"""Bounded replay protection, keyed by (sender hotkey, stream): a nonce is reserved before its
signature is checked, so verification runs at most once per nonce.

    reservation = store.reserve(hotkey, uuid, nonce, now_ns)   # ReplayedRequest / StaleNonce if it may not be used
    if signature_ok: reservation.commit()   # accepted: remembered, can never be used again
    else:            reservation.fail()     # forged: remembered apart, refused without a second verification
    reservation.release()                   # (finally) no verification ran (413, timeout, disconnect): free again

Accepted nonces are remembered while they could still pass the freshness window (``retention_ns``).
Unlike bittensor 10's "newer than the last one" rule, concurrent calls of one dendrite that arrive
out of order are accepted, and an exact replay never is. Memory is bounded: past ``per_key``
accepted nonces for a key, the oldest is dropped and becomes that key's floor (nonces at or below
it are refused); past ``max_keys`` keys, the least recently used key is dropped and its newest
accepted nonce becomes a global floor. Either way nothing once accepted can be accepted again.

Only signed (``commit``) nonces move floors. A forged request can mark exactly the (hotkey, stream,
nonce) it names as failed (``fail``), in a separate store of at most ``max_failed`` entries that
never raises a floor: to block a validator's next request an attacker would have to guess the
nanosecond nonce (and, for legacy calls, the dendrite uuid) it will sign, so failed entries cannot
starve a legitimate sender. A nonce is ``pending`` only while one request holds it.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from miner.auth.errors import ReplayedRequest, StaleNonce

log = logging.getLogger(__name__)

_Key = tuple[str, str]


@dataclass
class _KeyState:
    floor: int = -1
    newest: int = -1
    heap: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


class Reservation:
    """One request's hold on a nonce; settle it once with ``commit`` or ``fail``, ``release`` otherwise."""

    def __init__(self, store: "NonceStore", key: _Key, nonce: int, now_ns: int) -> None:
        self._store, self._key, self._nonce, self._now_ns = store, key, nonce, now_ns
        self.settled = False

    def commit(self) -> None:
        """The signature verified: the nonce is used."""
        self._settle(self._store._commit)

    def fail(self) -> None:
        """The signature did not verify: the nonce is refused from now on, without verifying again."""
        self._settle(self._store._fail)

    def release(self) -> None:
        """No signature was checked (the request ended first): the nonce may be used again."""
        self._settle(self._store._release)

    def _settle(self, how) -> None:
        if not self.settled:
            self.settled = True
            how(self._key, self._nonce, self._now_ns)


class NonceStore:
    """Thread-safe reservation and recording of (key, nonce) pairs."""

    def __init__(self, retention_ns: int, per_key: int = 1024, max_keys: int = 10_000,
                 max_failed: int = 65_536) -> None:
        self.retention_ns = retention_ns
        self.per_key = per_key
        self.max_keys = max_keys
        self.max_failed = max_failed
        self._keys: OrderedDict[_Key, _KeyState] = OrderedDict()
        self._pending: set[tuple[_Key, int]] = set()
        self._failed: OrderedDict[tuple[_Key, int], int] = OrderedDict()  # -> time recorded (ns)
        self._global_floor = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Accepted nonces remembered."""
        with self._lock:
            return sum(len(s.seen) for s in self._keys.values())

    @property
    def failed_count(self) -> int:
        with self._lock:
            return len(self._failed)

    def reserve(self, hotkey: str, uuid: str, nonce: int, now_ns: int) -> Reservation:
        """Hold ``nonce`` for (hotkey, uuid); ``ReplayedRequest``/``StaleNonce`` if it may not be used."""
        key = (hotkey, uuid)
        with self._lock:
            state = self._keys.get(key)
            if nonce <= self._global_floor or (state is not None and nonce <= state.floor):
                raise StaleNonce("nonce is older than nonces already processed for this dendrite")
            if state is not None and nonce in state.seen:
                raise ReplayedRequest(f"nonce {nonce} of this sender (stream {uuid}) was already used")
            if (key, nonce) in self._pending:
                raise ReplayedRequest(f"nonce {nonce} of this sender (stream {uuid}) is in use by another request")
            if (key, nonce) in self._failed:
                raise ReplayedRequest(f"nonce {nonce} of this sender (stream {uuid}) already failed verification")
            self._pending.add((key, nonce))
        return Reservation(self, key, nonce, now_ns)

    def _release(self, key: _Key, nonce: int, now_ns: int) -> None:
        with self._lock:
            self._pending.discard((key, nonce))

    def _fail(self, key: _Key, nonce: int, now_ns: int) -> None:
        with self._lock:
            self._pending.discard((key, nonce))
            self._failed[(key, nonce)] = now_ns
            expired_before = now_ns - self.retention_ns
            while self._failed and (len(self._failed) > self.max_failed
                                    or next(iter(self._failed.values())) < expired_before):
                self._failed.popitem(last=False)

    def _commit(self, key: _Key, nonce: int, now_ns: int) -> None:
        with self._lock:
            self._pending.discard((key, nonce))
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _KeyState()
            self._keys.move_to_end(key)
            heapq.heappush(state.heap, nonce)
            state.seen.add(nonce)
            state.newest = max(state.newest, nonce)
            self._prune(state, now_ns)
            self._bound_keys(now_ns)

    def _prune(self, state: _KeyState, now_ns: int) -> None:
        expired_before = now_ns - self.retention_ns
        while state.heap and (state.heap[0] < expired_before or len(state.heap) > self.per_key):
            dropped = heapq.heappop(state.heap)
            state.seen.discard(dropped)
            if dropped >= expired_before:
                state.floor = max(state.floor, dropped)

    def _bound_keys(self, now_ns: int) -> None:
        if len(self._keys) <= self.max_keys:
            return
        expired_before = now_ns - self.retention_ns
        for key in [k for k, s in self._keys.items() if s.newest < expired_before]:
            del self._keys[key]
        while len(self._keys) > self.max_keys:
            key, state = self._keys.popitem(last=False)
            self._global_floor = max(self._global_floor, state.newest)
            log.warning("nonce store full: dropped the least recently used dendrite",
                        extra={"fields": {"hotkey": key[0], "uuid": key[1], "max_keys": self.max_keys}})
