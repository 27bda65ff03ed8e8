"""Round planning over several workers: longest first, each clip to the worker free first, each worker at
its own (calibrated) speed; the LengthCheck answer from that schedule's makespan, with the shipped H100
and H200 rows of configs/throughput.toml."""

from dataclasses import replace

import pytest

from upscaler.calibration import ThroughputCalibration
from upscaler.planner import (GIB, ClipWork, Measurement, ThroughputTable, WorkerCapacity, estimate_seconds,
                              longest_first, max_content_length, plan, round_makespan, schedule)
from upscaler.settings import load_settings

SD24K = (3840, 2160)  # SD24K and HD24K both answer for 4K output
SETTINGS = load_settings()


@pytest.fixture(scope="module")
def shipped() -> ThroughputTable:
    return ThroughputTable.load()


def _clip_s(table: ThroughputTable, device: str) -> float:
    return estimate_seconds(*SD24K, 300, table, "tiny", device)


def test_per_clip_estimates_of_the_shipped_rows(shipped: ThroughputTable) -> None:
    # 300 frames at 9.90 (H200) and 9.37 (H100) frames/s, x1.15 margin, +1.5 s per clip
    assert _clip_s(shipped, "h200") == pytest.approx(300 / 9.90 * 1.15 + 1.5)
    assert _clip_s(shipped, "h100") == pytest.approx(300 / 9.37 * 1.15 + 1.5)


@pytest.mark.parametrize(("device", "workers", "makespan_clips", "answer"), [
    ("h200", 1, 5, 5), ("h200", 2, 3, 10), ("h200", 4, 2, 10),
    ("h100", 1, 5, 5), ("h100", 2, 3, 10), ("h100", 4, 2, 10),
])
def test_one_class(shipped: ThroughputTable, device: str, workers: int, makespan_clips: int, answer: int) -> None:
    """5 x 10 s of SD24K: the busiest worker runs ceil(5 / workers) clips."""
    pool = [WorkerCapacity(device, shipped)] * workers
    work = [ClipWork(*SD24K, 300)] * 5
    assert round_makespan(work, pool) == pytest.approx(makespan_clips * _clip_s(shipped, device))
    assert max_content_length(*SD24K, pool) == answer


def test_mixed_classes(shipped: ThroughputTable) -> None:
    h100, h200 = _clip_s(shipped, "h100"), _clip_s(shipped, "h200")
    pool = [WorkerCapacity("h100", shipped), WorkerCapacity("h200", shipped)]
    work = [ClipWork(*SD24K, 300)] * 5
    # free first: h100 (0), h200 (0), h200 (h200), h100 (h100), h200 (2 x h200)
    assert [a.worker for a in schedule(work, pool)] == [0, 1, 1, 0, 1]
    assert round_makespan(work, pool) == pytest.approx(max(2 * h100, 3 * h200))
    assert max_content_length(*SD24K, pool) == 10
    # one H200 with a slow unmeasured GPU (half an H100) beside it does not reach 10 s
    assert max_content_length(*SD24K, [WorkerCapacity("h200", shipped), WorkerCapacity("l4", shipped)]) == 5


def test_backlog_counts(shipped: ThroughputTable) -> None:
    """Two H200s each 40 s from free no longer fit five 10 s clips; one free and one busy for 20 s still do."""
    pool = [WorkerCapacity("h200", shipped, busy_for=40.0)] * 2
    assert max_content_length(*SD24K, pool) == 5
    assert max_content_length(*SD24K, [WorkerCapacity("h200", shipped), WorkerCapacity("h200", shipped, 20.0)]) == 10


def test_no_worker_up_answers_five(shipped: ThroughputTable) -> None:
    assert round_makespan([ClipWork(*SD24K, 300)], []) == float("inf")
    assert max_content_length(*SD24K, []) == 5
    with pytest.raises(ValueError, match="no workers"):
        schedule([ClipWork(*SD24K, 300)], [])


def test_longest_first_and_each_worker_at_its_own_calibrated_speed() -> None:
    rows = (Measurement("h100", "tiny", 100, 100, 10.0, 1.0),)
    table = ThroughputTable(rows, unknown_gpu_factor=0.5, safety_margin=1.0, clip_overhead_s=0.0)
    slow = ThroughputCalibration(weight=1.0)
    slow.observe("tiny", 100, 100, measured_fps=5.0, table_fps=10.0)  # this machine runs at half the table
    pool = [WorkerCapacity("h100", table), WorkerCapacity("h100", replace(table, calibration=slow))]
    clips = [ClipWork(100, 100, 10), ClipWork(100, 100, 40), ClipWork(100, 100, 20)]
    assert longest_first(clips) == [1, 2, 0]
    # 40 frames -> worker 0 (4 s); 20 -> worker 1 at 5 fps (4 s); 10 -> worker 0, free at 4 s (5 s)
    ordered = [clips[i] for i in longest_first(clips)]
    assert [(a.worker, a.start, a.finish) for a in schedule(ordered, pool)] == [(0, 0.0, 4.0), (1, 0.0, 4.0),
                                                                                (0, 4.0, 5.0)]
    assert round_makespan(clips, pool) == 5.0


def test_a_tiled_clip_is_priced_in_the_layout_of_its_workers_memory(shipped: ThroughputTable) -> None:
    """A tiled clip costs what the planner estimates for the layout the worker's memory gets (untiled where
    the frame fits it, as the worker then runs it); without the worker's memory, the table's tiled slowdown."""
    clip = ClipWork(*SD24K, 300, "tiny", tiled=True)
    small = WorkerCapacity("h200", shipped, free_vram_bytes=22 * GIB, settings=SETTINGS)
    assert small.seconds(clip) == pytest.approx(
        plan(*SD24K, 300, free_vram_bytes=22 * GIB, deadline_s=None, table=shipped, device="h200",
             settings=SETTINGS).est_seconds)
    assert small.seconds(clip) > _clip_s(shipped, "h200")
    assert WorkerCapacity("h200", shipped, free_vram_bytes=80 * GIB, settings=SETTINGS).seconds(clip) == pytest.approx(
        _clip_s(shipped, "h200"))
    assert WorkerCapacity("h200", shipped).seconds(clip) == pytest.approx(
        estimate_seconds(*SD24K, 300, shipped, "tiny", "h200", tiled=True))


def test_length_check_prices_workers_whose_memory_makes_them_tile(shipped: ThroughputTable) -> None:
    """Workers that must tile 4K (22 GiB usable, as a 24 GB card) are priced in their layout: two such
    H100s cannot take 5 x 10 s of 4K, though two with the whole card can."""
    untiled = ClipWork(*SD24K, 300, "tiny")
    small = WorkerCapacity("h100", shipped, free_vram_bytes=22 * GIB, settings=SETTINGS)
    assert small.seconds(untiled) == pytest.approx(small.seconds(ClipWork(*SD24K, 300, "tiny", tiled=True)))
    assert small.seconds(untiled) > _clip_s(shipped, "h100")
    assert max_content_length(*SD24K, [small] * 2) == 5
    assert max_content_length(*SD24K, [WorkerCapacity("h100", shipped, free_vram_bytes=80 * GIB,
                                                      settings=SETTINGS)] * 2) == 10
