"""Benchmark/profile cases: parsing and the settings a case runs with (shared by flashvsr-bench and -profile)."""

from __future__ import annotations

import argparse

import pytest

from scripts.bench import Case, case_settings
from upscaler.settings import load_settings


def test_case_parsing_and_tiled_settings():
    plain, tiled = Case.parse("tiny:SD24K:300"), Case.parse("tiny:SD24K:60:1024")
    assert (plain.frames, plain.tile_size, tiled.tile_size) == (300, 0, 1024)
    assert tiled.name == "tiny:SD24K:60:tile1024"
    base = load_settings(weights="random-small", device="cpu")
    assert not case_settings(base, plain).tiling.enabled
    small = case_settings(base, Case.parse("tiny:SD24K:60:128"))
    assert (small.tiling.tile_size, small.tiling.tile_overlap) == (128, 64)  # overlap capped at half a tile
    with pytest.raises(argparse.ArgumentTypeError):
        Case.parse("tiny:SD24K")
    with pytest.raises(ValueError, match="multiple of"):
        case_settings(base, Case.parse("tiny:SD24K:60:1000"))


def test_capped_and_band_cases():
    from scripts.bench import Case, case_settings
    capped = Case.parse("tiny:SD24K:300@22")
    assert (capped.max_vram_gib, capped.auto_tiles, capped.name) == (22.0, True, "tiny:SD24K:300:tileauto@22")
    band = Case.parse("tiny:SD24K:60:3840x768@15.5")
    assert (band.tile_size, band.tile_height, band.auto_tiles, band.max_vram_gib) == (3840, 768, False, 15.5)
    assert band.name == "tiny:SD24K:60:tile3840x768@15.5"
    base = load_settings(weights="random-small", device="cpu")
    assert case_settings(base, capped).tiling.auto and not case_settings(base, capped).tiling.enabled
    tiling = case_settings(base, band).tiling
    assert (tiling.tile_size, tiling.height, tiling.tile_overlap) == (3840, 768, 64)
    with pytest.raises(argparse.ArgumentTypeError, match="WxH or auto"):
        Case.parse("tiny:SD24K:60:big")


def test_planner_check_reports_the_layout_estimate():
    from scripts.bench import Case, planner_check
    from upscaler.planner import GIB, ThroughputTable
    from upscaler.settings import load_settings
    table, settings = ThroughputTable.load(), load_settings(kv_cache_dtype="fp8")  # the miner's and the bench's cache
    untiled = planner_check(table, Case.parse("tiny:SD24K:300"), 300, 139 * GIB, 31.8, "h200", settings)
    capped = planner_check(table, Case.parse("tiny:SD24K:300@22"), 300, 22 * GIB, 60.0, "h200", settings)
    assert untiled["tile_size"] == 0 and untiled["est_s"] == pytest.approx(300 / 9.90 + 1.5, abs=0.01)
    assert capped["tile_size"] == 768 and capped["est_s"] > untiled["est_s"]
    assert capped["est_over_measured"] == pytest.approx(capped["est_s"] / 60.0, abs=1e-3)


def test_small_gpu_summary_checks_speed_peak_and_estimate():
    from scripts.small_gpu_summary import summary
    tiling = {"tile_width": 0, "tile_height": 0, "overlap": 64, "tiles": 1, "decoder_frames_per_pass": 1}
    bands = {"tile_width": 3840, "tile_height": 768, "overlap": 64, "tiles": 3, "decoder_frames_per_pass": 1}
    row = {"variant": "tiny", "task": "SD24K", "frames": 300}
    result = {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "torch": "2.x", "kv_cache": "fp8", "rows": [
        dict(row, case="tiny:SD24K:300", tiling=tiling, fps=10.0, peak_vram_gib=44.1, total_s=30.0, max_vram_gib=0.0,
             planner={"est_s": 31.8, "est_over_measured": 1.06}),
        dict(row, case="tiny:SD24K:300:tileauto@22", tiling=bands, fps=6.5, peak_vram_gib=18.2, total_s=46.2,
             max_vram_gib=22.0, planner={"est_s": 60.0, "est_over_measured": 1.3}),
        {"case": "tiny:SD24K:300:tileauto@15", "error": "out of memory: ..."},
    ], "seam_error": [{"case": "tiny:SD24K:300:tileauto@22", "tiles": 3, "tile_width": 3840, "tile_height": 768,
                       "overlap": 64, **{k: {"psnr_db": 50.0, "max_abs": 3.0, "mean_abs": 0.1} for k in ("all", "seams", "away")}}]}
    lines = summary(result)
    assert "within 15%" in lines[1] and "65% of untiled (met 60%)" in lines[2] and "cap 22: ok" in lines[2]
    assert "+30%, outside 15%" in lines[2] and "ERROR out of memory" in lines[3]
    assert lines[4].startswith("seams tiny:SD24K:300:tileauto@22") and "away 50.0 dB max 3" in lines[4]


def test_small_gpu_summary_writes_measured_peaks_as_rows_the_memory_model_reads(tmp_path):
    """The summary's ``[[peak]]`` rows are TOML the throughput table takes: a tiled row records its blend,
    which the fit takes off."""
    import tomllib

    from scripts.small_gpu_summary import peak_rows
    from upscaler.tile_plan import PeakRow
    bands = {"tile_width": 3840, "tile_height": 768, "overlap": 64, "tiles": 3, "decoder": "tcdecoder",
             "model_width": 3840, "model_height": 768, "decoder_frames_per_pass": 1, "blend_frames": 8, "blend_gib": 2.41}
    untiled = dict(bands, tiles=1, model_height=2176, blend_frames=0, blend_gib=0.0)
    result = {"gpu": "NVIDIA H100 80GB HBM3", "kv_cache": "fp8", "rows": [
        {"case": "tiny:SD24K:300", "tiling": untiled, "peak_vram_gib": 43.7},
        {"case": "tiny:SD24K:300:tileauto@22", "tiling": bands, "peak_vram_gib": 18.2, "max_vram_gib": 22.0},
        {"case": "tiny:SD24K:300:tileauto@15", "error": "out of memory: ..."}]}
    text = "\n".join(peak_rows(result, "2026-12-07"))
    rows = tomllib.loads(text)["peak"]
    assert [PeakRow(**r) for r in rows] == [
        PeakRow("tcdecoder", 3840, 2176, 1, 43.7, "fp8"), PeakRow("tcdecoder", 3840, 768, 1, 18.2, "fp8", 2.41)]
    assert "under a 22 GiB cap, NVIDIA H100 80GB HBM3 2026-12-07" in text
