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
    table = ThroughputTable.load()
    untiled = planner_check(table, Case.parse("tiny:SD24K:300"), 300, 139 * GIB, 31.8, "h200")
    capped = planner_check(table, Case.parse("tiny:SD24K:300@22"), 300, 22 * GIB, 60.0, "h200")
    assert untiled["tile_size"] == 0 and untiled["est_s"] == pytest.approx(300 / 9.90 + 1.5, abs=0.01)
    assert capped["tile_size"] == 768 and capped["est_s"] > untiled["est_s"]
    assert capped["est_over_measured"] == pytest.approx(capped["est_s"] / 60.0, abs=1e-3)
