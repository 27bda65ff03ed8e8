"""Admission control: predict when new work would finish given the workers and the queue, refuse what
would be late (the schedule is the planner's: each clip to the worker free first, at that worker's speed)."""

from __future__ import annotations

from dataclasses import dataclass

from upscaler.planner import ClipWork, WorkerCapacity, schedule


@dataclass(frozen=True)
class Backlog:
    """What is ahead of a new request: the workers that are up (each with the seconds until it is free)
    and the queued clips that outrank it, in queue order."""

    workers: tuple[WorkerCapacity, ...]
    queued: tuple[ClipWork, ...]


def predict_finishes(backlog: Backlog, new: list[ClipWork]) -> list[tuple[float, float]]:
    """(seconds from now until each of ``new`` finishes, its own seconds of work), behind the queue."""
    assignments = schedule([*backlog.queued, *new], backlog.workers)[len(backlog.queued):]
    return [(a.finish, a.finish - a.start) for a in assignments]


def admit(backlog: Backlog, clips: list[ClipWork], seconds_left: float) -> list[str | None]:
    """For each clip, None (admitted) or the reason it is refused; refused work takes no capacity."""
    if not backlog.workers:
        return ["no worker is up (all lost or restarting)"] * len(clips)
    admitted: list[ClipWork] = []
    decisions: list[str | None] = []
    for clip in clips:
        finish, work = predict_finishes(backlog, admitted + [clip])[-1]
        if finish > seconds_left:
            decisions.append(
                f"estimated finish in {finish:.1f}s ({work:.1f}s of work, {len(backlog.queued) + len(admitted)} "
                f"clips ahead on {len(backlog.workers)} workers) exceeds the {max(seconds_left, 0.0):.1f}s left "
                f"before the caller's timeout"
            )
        else:
            admitted.append(clip)
            decisions.append(None)
    return decisions
