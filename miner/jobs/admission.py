"""Admission control: predict when new work would finish given the queue, refuse what would be late."""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Backlog:
    """What is ahead of a new request: per worker, seconds until free; queued estimates that outrank it."""

    busy_for: tuple[float, ...]
    queued: tuple[float, ...]


def predict_finishes(backlog: Backlog, new: list[float]) -> list[float]:
    """Seconds from now until each of ``new`` finishes (greedy: each task to the worker free soonest)."""
    free_at = list(backlog.busy_for) or [0.0]
    heapq.heapify(free_at)
    for est in backlog.queued:
        heapq.heappush(free_at, heapq.heappop(free_at) + est)
    finishes = []
    for est in new:
        done = heapq.heappop(free_at) + est
        heapq.heappush(free_at, done)
        finishes.append(done)
    return finishes


def admit(backlog: Backlog, estimates: list[float], seconds_left: float) -> list[str | None]:
    """For each estimate, None (admitted) or the reason it is refused; refused work takes no capacity."""
    admitted: list[float] = []
    decisions: list[str | None] = []
    for est in estimates:
        finish = predict_finishes(backlog, admitted + [est])[-1]
        if finish > seconds_left:
            ahead = sum(backlog.queued) + sum(admitted)
            decisions.append(
                f"estimated finish in {finish:.1f}s ({est:.1f}s of work, {ahead:.1f}s queued ahead) "
                f"exceeds the {max(seconds_left, 0.0):.1f}s left before the caller's timeout"
            )
        else:
            admitted.append(est)
            decisions.append(None)
    return decisions
