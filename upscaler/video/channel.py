"""A bounded hand-off queue between one producer thread and one consumer thread."""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")

_POLL_S = 0.1
_END = object()


class ChannelAborted(Exception):
    """The other side gave up; stop producing or consuming."""


class Channel(Generic[T]):
    """Bounded FIFO of items, closed by an end marker or an error that the consumer re-raises.

    Either side may :meth:`abort`, which unblocks the other side (a blocked ``put`` returns False and
    a blocked ``get`` raises :class:`ChannelAborted`), so neither thread can hang on a dead partner.
    ``wait_s`` adds up the seconds the consumer spent blocked in :meth:`get` (the producer fell behind).
    """

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, maxsize))
        self._aborted = threading.Event()
        self.wait_s = 0.0

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def _put(self, item: object) -> bool:
        while not self._aborted.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def put(self, item: T) -> bool:
        """Block until there is room; False when the channel was aborted (the item was dropped)."""
        return self._put(item)

    def close(self, error: BaseException | None = None) -> None:
        """Mark the end of the stream, or pass ``error`` to the consumer."""
        self._put(error if error is not None else _END)

    def abort(self) -> None:
        """Stop both sides and drop everything queued."""
        self._aborted.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def get(self) -> T:
        """The next item; raises StopIteration at the end, the producer's error, or ChannelAborted."""
        if self._aborted.is_set():
            raise ChannelAborted()
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            began = time.perf_counter()
            item = self._wait()
            self.wait_s += time.perf_counter() - began
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def _wait(self) -> object:
        """Block for the next queued object, polling for an abort."""
        while True:
            if self._aborted.is_set():
                raise ChannelAborted()
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.get()
            except StopIteration:
                return
