"""Planner choices follow the measured table, memory and deadline."""

from dataclasses import replace

import pytest

from upscaler.calibration import ThroughputCalibration
from upscaler.planner import (GIB, Measurement, ThroughputTable, WorkerCapacity, calibration_key, estimate_seconds,
                              max_content_length, plan)
from upscaler.settings import load_settings

SETTINGS = load_settings()


def _table() -> ThroughputTable:
    rows = (
        Measurement("h100", "tiny", 3840, 2160, 12.0, 40.0),
        Measurement("h100", "tiny", 1920, 1080, 45.0, 12.0),
        Measurement("h100", "full", 1920, 1080, 10.0, 20.0),
    )
    return ThroughputTable(rows, unknown_gpu_factor=0.5, safety_margin=1.0, clip_overhead_s=0.0)


def test_estimates_scale_with_pixels_and_unknown_gpus_are_slower() -> None:
    table = _table()
    assert estimate_seconds(3840, 2160, 120, table, "tiny", "h100") == 10.0
    w = (2560 * 1440 - 1920 * 1080) / (3840 * 2160 - 1920 * 1080)
    expected_spf = (1 - w) / 45.0 + w / 12.0
    assert abs(table.frames_per_second("h100", "tiny", 2560, 1440) - 1 / expected_spf) < 1e-9
    assert abs(table.frames_per_second("h100", "tiny", 7680, 4320) - 3.0) < 1e-9
    assert table.frames_per_second("rtx4090", "tiny", 3840, 2160) == 6.0


def test_plan_prefers_full_only_when_it_fits() -> None:
    table = _table()
    fast = plan(1920, 1080, 150, free_vram_bytes=70 * GIB, deadline_s=60, table=table, device="h100", prefer_quality=True,
                settings=SETTINGS)
    assert fast.variant == "full" and fast.tile_size == 0
    late = plan(1920, 1080, 300, free_vram_bytes=70 * GIB, deadline_s=20, table=table, device="h100", prefer_quality=True,
                settings=SETTINGS)
    assert late.variant == "tiny" and "full skipped" in late.reason


def test_plan_tiles_when_memory_is_short_and_long_clips_stream() -> None:
    table = _table()
    small_gpu = plan(3840, 2160, 150, free_vram_bytes=20 * GIB, deadline_s=None, table=table, device="h100",
                     settings=SETTINGS)
    assert small_gpu.tile_size > 0 and "tiled" in small_gpu.reason
    long_clip = plan(1920, 1080, 5000, free_vram_bytes=None, deadline_s=None, table=table, device="h100")
    assert long_clip.variant == "tiny-long"


def test_tiled_plans_are_estimated_at_the_tiled_speed_and_calibrated_apart() -> None:
    calibration = ThroughputCalibration(weight=1.0)
    table = replace(_table(), tiled_slowdown=3.0, calibration=calibration)
    untiled = plan(3840, 2160, 120, free_vram_bytes=80 * GIB, deadline_s=None, table=table, device="h100",
                   settings=SETTINGS)
    tiled = plan(3840, 2160, 120, free_vram_bytes=20 * GIB, deadline_s=None, table=table, device="h100",
                 settings=SETTINGS)
    assert (untiled.tile_size, untiled.est_seconds) == (0, 10.0)
    assert tiled.tile_size > 0 and tiled.est_seconds == 30.0  # 120 frames at 12 / 3 frames/s
    # A tiled clip measured at 2 frames/s moves only the tiled estimate.
    calibration.observe(calibration_key("tiny", tiled=True), 3840, 2160, measured_fps=2.0,
                        table_fps=table.frames_per_second("h100", "tiny", 3840, 2160, tiled=True, calibrated=False))
    assert estimate_seconds(3840, 2160, 120, table, "tiny", "h100", tiled=True) == 60.0
    assert estimate_seconds(3840, 2160, 120, table, "tiny", "h100") == 10.0


def test_the_shipped_table_estimates_tiled_runs_slower() -> None:
    table = ThroughputTable.load()
    untiled = estimate_seconds(3840, 2160, 300, table, "tiny", "h200")
    assert estimate_seconds(3840, 2160, 300, table, "tiny", "h200", tiled=True) > 3 * untiled - 3 * table.clip_overhead_s


def test_length_check_answers_ten_only_when_five_clips_fit() -> None:
    table = _table()
    assert max_content_length(1920, 1080, [WorkerCapacity("h100", table)]) == 10
    assert max_content_length(3840, 2160, [WorkerCapacity("h100", table)]) == 10  # 5 x 300 / 12 = 125 s
    slow = ThroughputTable(table.entries, 0.5, 1.2, 1.5)
    assert max_content_length(3840, 2160, [WorkerCapacity("h100", slow)]) == 5


def test_a_measured_gpu_without_tiny_long_rows_uses_its_own_tiny_rows() -> None:
    rows = _table().entries + (Measurement("h200", "tiny", 3840, 2160, 7.0, 44.0),)
    table = ThroughputTable(rows, unknown_gpu_factor=0.5, safety_margin=1.0, clip_overhead_s=0.0)
    assert table.frames_per_second("h200", "tiny-long", 3840, 2160) == 7.0
    assert table.frames_per_second("h200", "full", 1920, 1080) == 5.0  # no H200 Full row: the H100's, halved


def test_calibration_moves_estimates_toward_measured_speed() -> None:
    calibration = ThroughputCalibration(weight=0.5, min_factor=0.25, max_factor=2.0)
    table = replace(_table(), calibration=calibration)
    assert table.frames_per_second("h100", "tiny", 3840, 2160) == 12.0  # nothing observed yet
    assert calibration.observe("tiny", 3840, 2160, measured_fps=9.0, table_fps=12.0) == 0.75
    assert table.frames_per_second("h100", "tiny", 3840, 2160) == 9.0
    assert table.frames_per_second("h100", "tiny", 3840, 2160, calibrated=False) == 12.0
    assert calibration.observe("tiny", 3840, 2160, measured_fps=12.0, table_fps=12.0) == 0.875  # moving average
    # A size not seen yet takes the variant's smallest factor; another variant is untouched.
    calibration.observe("tiny", 1920, 1080, measured_fps=54.0, table_fps=45.0)
    assert calibration.factor("tiny", 2560, 1440) == 0.875
    assert table.frames_per_second("h100", "full", 1920, 1080) == 10.0
    # The LengthCheck answer follows: 5 x 300 frames at 4K take 125 s by the table, ~143 s as measured.
    assert max_content_length(3840, 2160, [WorkerCapacity("h100", _table())]) == 10
    assert max_content_length(3840, 2160, [WorkerCapacity("h100", table)]) == 5


def test_calibration_clamps_odd_clips_and_rejects_bad_settings() -> None:
    calibration = ThroughputCalibration(weight=1.0, min_factor=0.5, max_factor=1.5)
    assert calibration.observe("tiny", 64, 64, measured_fps=0.1, table_fps=10.0) == 0.5
    assert calibration.observe("tiny", 64, 64, measured_fps=100.0, table_fps=10.0) == 1.5
    with pytest.raises(ValueError, match="positive"):
        calibration.observe("tiny", 64, 64, measured_fps=0.0, table_fps=10.0)
    with pytest.raises(ValueError, match="weight"):
        ThroughputCalibration(weight=0.0)
    with pytest.raises(ValueError, match="bounds"):
        ThroughputCalibration(min_factor=1.5, max_factor=2.0)
