"""A running clip's progress lines: at most one per interval, with frames, frames/s and ETA."""

from __future__ import annotations

import logging

from miner.jobs.worker import ProgressLog
from upscaler.report import Progress


def _fields(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == "progress"]


def test_progress_is_logged_at_most_once_per_interval(caplog) -> None:
    now = [100.0]
    progress = ProgressLog("task-1", interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="miner.jobs.worker"):
        for t, done in ((104.0, 40), (110.5, 100), (115.0, 140), (121.0, 200)):
            now[0] = t
            progress(Progress(frames_done=done, frames_total=300, elapsed_s=t - 100.0))
    assert _fields(caplog) == [
        {"task_id": "task-1", "frames": 100, "of": 300, "fps": round(100 / 10.5, 2), "eta_s": round(200 / (100 / 10.5), 1)},
        {"task_id": "task-1", "frames": 200, "of": 300, "fps": round(200 / 21, 2), "eta_s": round(100 / (200 / 21), 1)},
    ]


def test_progress_log_off_and_unknown_total(caplog) -> None:
    now = [0.0]
    off = ProgressLog("t", interval_s=0.0, clock=lambda: now[0])
    unknown = ProgressLog("u", interval_s=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="miner.jobs.worker"):
        now[0] = 5.0
        off(Progress(10, 20, 5.0))
        unknown(Progress(10, 0, 5.0))
    assert _fields(caplog) == [{"task_id": "u", "frames": 10, "of": 0, "fps": 2.0, "eta_s": None}]
