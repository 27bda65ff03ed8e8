"""Per-source refusal budget: a token bucket per source, a temporary block list, quiet logs.

A source is what ``ServerLimits.source_of`` makes of the client's address (an IPv4 address, an IPv6 /64 written
``2001:db8:1:2::/64``): the keys here, and what the log lines name.

    sources = SourceGuard(burst=30, rate_per_s=1.0, block_s=60.0, max_sources=65536)
    if sources.blocked(source): answer 429
    ...
    sources.refused(source, "unauthenticated")   # each refused request spends a token; none left: blocked

Memory is bounded: at most ``max_sources`` sources are tracked, the least recently seen dropped first
(a dropped source starts again with a full bucket; an attacker that cycles more than ``max_sources``
sources still meets the per-request checks, which read no body). Each source is logged at most
once per ``log_every_s`` with the counts of its refusals by reason since its last line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class _Source:
    tokens: float
    updated: float
    blocked_until: float = 0.0
    logged_at: float = float("-inf")
    unlogged: Counter = field(default_factory=Counter)


class SourceGuard:
    """Token buckets and blocks per source (single-threaded: the server's event loop)."""

    def __init__(self, *, burst: float, rate_per_s: float, block_s: float, max_sources: int,
                 log_every_s: float = 60.0, on_block: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate_per_s, self.block_s = float(burst), float(rate_per_s), float(block_s)
        self.max_sources, self.log_every_s = int(max_sources), float(log_every_s)
        self._on_block = on_block
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def blocked_count(self) -> int:
        """Sources blocked right now."""
        now = self._clock()
        return sum(1 for s in self._sources.values() if s.blocked_until > now)

    def blocked(self, source: str) -> bool:
        """Whether requests from ``source`` are refused (429) without being looked at."""
        state = self._sources.get(source)
        if state is None or state.blocked_until <= self._clock():
            return False
        self._sources.move_to_end(source)  # still seen: the last to be forgotten when the table is full
        self._note(source, state, "rate_limited")
        return True

    def refused(self, source: str, reason: str) -> bool:
        """Spend one token of ``source`` for a refused request; block it when none is left (then True)."""
        now = self._clock()
        state = self._sources.get(source)
        if state is None:
            state = self._sources[source] = _Source(tokens=self.burst, updated=now)
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        state.tokens = min(self.burst, state.tokens + (now - state.updated) * self.rate_per_s)
        state.updated = now
        state.tokens -= 1.0
        if state.tokens < 0 and state.blocked_until <= now:
            state.blocked_until = now + self.block_s
            state.tokens = 0.0
            if self._on_block is not None:
                self._on_block()
            self._note(source, state, reason, force=True)
            return True
        self._note(source, state, reason)
        return False

    def _note(self, source: str, state: _Source, reason: str, force: bool = False) -> None:
        state.unlogged[reason] += 1
        now = self._clock()
        if not force and now - state.logged_at < self.log_every_s:
            return
        blocked_for = max(0.0, state.blocked_until - now)
        log.warning("refusing requests from a source", extra={"fields": {
            "source": source, "refused": dict(state.unlogged), "blocked_s": round(blocked_for, 1),
            "hint": "a validator blocked here should check its clock, wallet and miner hotkey" if blocked_for else ""}})
        state.unlogged.clear()
        state.logged_at = now
