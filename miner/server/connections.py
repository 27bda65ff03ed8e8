"""Connection-level guards uvicorn lacks: a deadline for a request's headers, connections per IP, and
room for new connections when the global limit is near.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the header size
(``h11_max_incomplete_event_size``), but arms no timer while a connection is still sending its
request line and headers: a client that opens a connection and never finishes its headers holds it
forever (slowloris), and such connections count against ``limit_concurrency`` until everyone gets
503. ``guarded_protocol`` returns uvicorn's h11 protocol with:

- a header deadline: a connection whose next request's headers are not complete ``header_timeout_s``
  after it opened (or after its previous answer) is closed;
- a cap of ``max_per_ip`` open connections per source (``source_of(ip)``: an IPv4 address, an IPv6 /64): the one
  over it is closed at once;
- connections from a source that ``blocked(source)`` names (the gate's block list) are closed at once;
- room at the limit: a new connection that brings the open ones to ``max_connections`` (uvicorn's
  ``limit_concurrency``, past which every request gets 503) closes the connection idle the longest
  (waiting for a request's headers: freshly opened, between keep-alive requests, or sending them
  slowly). A connection with a request in flight is never closed for room; those are at most the
  gate's ``max_in_flight`` slots, below ``max_connections``, so an idle one is there to close.

``on_close(source, reason)`` is called for each connection closed here (``header_timeout``,
``per_ip_limit``, ``blocked``, ``evicted``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from typing import Any, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(*, header_timeout_s: float, max_per_ip: int, max_connections: int,
                     source_of: Callable[[str], str], blocked: Callable[[str], bool] = lambda source: False,
                     on_close: Callable[[str, str], None] | None = None) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass for ``uvicorn.run(http=...)`` (one per server: it owns the per-source counts
    and the idle connections)."""
    per_source: Counter[str] = Counter()
    idle: OrderedDict[GuardedH11Protocol, None] = OrderedDict()  # waiting for headers, longest first
    closed = on_close or (lambda source, reason: None)

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _source: str | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._source = source = source_of(self.client[0] if self.client else "")
            per_source[source] += 1
            reason = "blocked" if blocked(source) else "per_ip_limit" if per_source[source] > max_per_ip else None
            if reason:
                self._close(reason)
                return
            if len(self.connections) >= max_connections:
                _close_longest_idle()
            self._wait_for_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._wait_for_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            if self._source is not None:
                per_source[self._source] -= 1
                if per_source[self._source] <= 0:
                    del per_source[self._source]
                self._source = None
            super().connection_lost(exc)

        def _wait_for_headers(self) -> None:
            """Idle from now: the header deadline runs, and this is the newest candidate for room."""
            self._stop_waiting()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_overdue)
            idle[self] = None

        def _stop_waiting(self) -> None:
            idle.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._close("header_timeout")

        def _close(self, reason: str) -> None:
            """Close this connection, and stop counting it at once: uvicorn forgets it in ``connection_lost``,
            which uvloop may run after a new connection's request has arrived (then refused 503)."""
            closed(self._source or "", reason)
            self._stop_waiting()
            self.transport.close()
            self.connections.discard(self)

    def _close_longest_idle() -> None:
        """Close the connection waiting for headers the longest (passing over those already closing: uvicorn's
        keep-alive timer closes idle ones without telling us)."""
        while idle:
            oldest, _ = idle.popitem(last=False)
            if not oldest.transport.is_closing():
                oldest._close("evicted")
                return

    return GuardedH11Protocol
