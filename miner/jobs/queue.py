"""A bounded priority queue for asyncio: highest stake first, FIFO among equals.

When full, a new item displaces the lowest-priority waiting item if it outranks it; otherwise it is
refused. Waiting items can be removed (their caller went away).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """No room, and the new item does not outrank anything waiting."""


@dataclass(order=True)
class _Entry(Generic[T]):
    neg_priority: float
    seq: int
    item: T = field(compare=False)
    removed: bool = field(default=False, compare=False)


class PriorityTaskQueue(Generic[T]):
    """``put`` returns the displaced item (or None); ``get`` waits for the best item."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._heap: list[_Entry[T]] = []
        self._entries: dict[int, _Entry[T]] = {}
        self._seq = itertools.count()
        self._available = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[T]:
        """Waiting items, best first."""
        return [e.item for e in sorted(self._entries.values())]

    async def put(self, item: T, priority: float) -> T | None:
        """Queue ``item``; raise ``QueueFull`` or return the item it displaced."""
        displaced = None
        if len(self._entries) >= self.maxsize:
            worst = max(self._entries.values())
            if -worst.neg_priority >= priority:
                raise QueueFull(f"queue full ({self.maxsize} waiting) and priority {priority:g} does not outrank them")
            self._drop(worst)
            displaced = worst.item
        entry = _Entry(-priority, next(self._seq), item)
        heapq.heappush(self._heap, entry)
        self._entries[id(item)] = entry
        async with self._available:
            self._available.notify()
        return displaced

    async def requeue(self, item: T, priority: float) -> None:
        """Put back an item just taken by a consumer that cannot run it: first among its equals, over
        ``maxsize`` if need be (it was admitted already)."""
        entry = _Entry(-priority, -next(self._seq), item)
        heapq.heappush(self._heap, entry)
        self._entries[id(item)] = entry
        async with self._available:
            self._available.notify()

    def remove(self, item: T) -> bool:
        """Take ``item`` out if it is still waiting."""
        entry = self._entries.get(id(item))
        if entry is None:
            return False
        self._drop(entry)
        return True

    def _drop(self, entry: _Entry[T]) -> None:
        entry.removed = True
        self._entries.pop(id(entry.item), None)

    async def get(self) -> T:
        """The highest-priority waiting item (waits while empty)."""
        async with self._available:
            while True:
                while self._heap and self._heap[0].removed:
                    heapq.heappop(self._heap)
                if self._heap:
                    entry = heapq.heappop(self._heap)
                    self._entries.pop(id(entry.item), None)
                    return entry.item
                await self._available.wait()

    def drain(self) -> list[T]:
        """Remove and return everything waiting."""
        items = self.items()
        for item in items:
            self.remove(item)
        return items
