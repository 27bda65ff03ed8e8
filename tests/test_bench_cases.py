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
