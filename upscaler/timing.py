"""Per-stage timing without host synchronisation inside the streaming loop."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    """Accumulates seconds per named stage.

    On CUDA, stages are bracketed with events and resolved once in :meth:`seconds`, so timing adds no
    synchronisation to the loop; on the CPU a wall clock is used.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._wall: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed GPU (or CPU) work under ``name``."""
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events[name].append((start, end))
        else:
            began = time.perf_counter()
            yield
            self._wall[name] += time.perf_counter() - began

    def add_wall(self, name: str, seconds: float) -> None:
        """Add host-measured seconds (for host-side stages such as waiting on the decoder thread)."""
        self._wall[name] += seconds

    def seconds(self) -> dict[str, float]:
        """Seconds per stage (synchronises once on CUDA)."""
        totals = dict(self._wall)
        if self._events:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                totals[name] = totals.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
        return totals
