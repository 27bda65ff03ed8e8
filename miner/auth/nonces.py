"""Bounded replay protection for legacy synapse nonces, keyed by (dendrite hotkey, dendrite uuid).

Every nonce accepted for a key is remembered while it could still pass the freshness window
(``retention_ns``). Unlike bittensor 10's "newer than the last one" rule, concurrent calls of one
dendrite that arrive out of order are accepted, and an exact replay never is. Memory is bounded:
past ``per_key`` nonces for a key, the oldest is dropped and becomes that key's floor (nonces at or
below it are refused); past ``max_keys`` keys, the least recently used key is dropped and its newest
nonce becomes a global floor. Either way nothing once accepted can be accepted again.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from miner.auth.errors import ReplayedRequest, StaleNonce

log = logging.getLogger(__name__)


@dataclass
class _KeyState:
    floor: int = -1
    newest: int = -1
    heap: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


class NonceStore:
    """Thread-safe check-and-record of (key, nonce) pairs."""

    def __init__(self, retention_ns: int, per_key: int = 1024, max_keys: int = 10_000) -> None:
        self.retention_ns = retention_ns
        self.per_key = per_key
        self.max_keys = max_keys
        self._keys: OrderedDict[tuple[str, str], _KeyState] = OrderedDict()
        self._global_floor = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(s.seen) for s in self._keys.values())

    def check_and_record(self, hotkey: str, uuid: str, nonce: int, now_ns: int) -> None:
        """Record ``nonce`` for (hotkey, uuid); ``ReplayedRequest``/``StaleNonce`` if it may not be used."""
        key = (hotkey, uuid)
        with self._lock:
            state = self._keys.get(key)
            if nonce <= self._global_floor or (state is not None and nonce <= state.floor):
                raise StaleNonce("nonce is older than nonces already processed for this dendrite")
            if state is not None and nonce in state.seen:
                raise ReplayedRequest(f"nonce {nonce} of this dendrite (uuid {uuid}) was already used")
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
