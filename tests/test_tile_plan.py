"""Tile layouts from free memory, the memory model fitted to measured peaks, and the GPU memory cap."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from upscaler import vram
from upscaler.blend_memory import blend_bytes
from upscaler.kv_cache_memory import ELEMENT_BYTES
from upscaler.cli import tiling_from_args
from upscaler.planner import GIB, ThroughputTable, plan
from upscaler.settings import KV_CACHE_DTYPES, TilingSettings, load_settings
from upscaler.tile_plan import (MemoryModel, PeakRow, TileLayout, TiledRow, blend_groups, candidate_layouts, choose_layout,
                                layout_slowdown, plan_layout)
from upscaler.tiling import tile_grid

SETTINGS = load_settings(kv_cache_dtype="fp8")  # the miner's K/V cache, which the documented layouts are for
TINY, FULL = SETTINGS.variant("tiny"), SETTINGS.variant("full")
KV = SETTINGS.kv_cache_dtype
MODEL = MemoryModel.load()


def _layout(usable_gib: float, width: int = 3840, height: int = 2160, variant=TINY, overlap: int = 64) -> TileLayout:
    return choose_layout(width, height, usable_bytes=int(usable_gib * GIB), model=MODEL, variant=variant, kv_cache=KV,
                         overlap=overlap)


def _least_peak(width: int, height: int, rows: int, columns: int, tile_w: int, tile_h: int) -> float:
    """The smallest predicted peak of a tiled grid: one decoder frame per pass, a blend group of one frame."""
    model_pixels = tile_w * -(-tile_h // 128) * 128
    return MODEL.peak_gib("tcdecoder", model_pixels, 1, KV) + blend_bytes(height, width, rows * columns, tile_h, tile_w, 1) / GIB


def test_memory_model_reproduces_the_measured_peaks() -> None:
    """The fit (its blend added back) is within 0.5 GiB of every shipped [[peak]] row, repeats of one case
    averaged (4K, 1080p, bands, tiles, Full; FP8 and bf16 K/V caches; the 1024 px tiles ran at 11.45 and
    12.1 GiB in two runs)."""
    from collections import defaultdict

    from upscaler.configfiles import load_config
    measured: dict[tuple, list[float]] = defaultdict(list)
    for raw in load_config("throughput")["peak"]:
        row = PeakRow(**raw)
        measured[(row.decoder, row.model_width * row.model_height, row.decoder_frames, row.kv_cache, row.blend_gib)].append(
            row.peak_gib)
    assert len(measured) >= 9
    for (decoder, pixels, frames, kv, blend), peaks in measured.items():
        predicted = MODEL.peak_gib(decoder, pixels, frames, kv) + blend
        assert predicted == pytest.approx(sum(peaks) / len(peaks), abs=0.5), (decoder, pixels, frames, kv, peaks)
    assert MODEL.adjustable_decoders == {"tcdecoder"}  # Full was measured at one frames-per-pass value only
    with pytest.raises(LookupError, match="add a \\[\\[peak\\]\\] row"):
        MODEL.peak_gib("other", 1, 1, "fp8")


def test_fit_recovers_known_coefficients_and_needs_enough_rows() -> None:
    truth = lambda d, w, h, f: 3.0 + 4.0 * w * h / 1e6 + {"a": 0.5, "b": 2.0}[d] * f * w * h / 1e6  # noqa: E731
    sizes = [("a", 1024, 1024, 4), ("a", 3840, 2176, 1), ("a", 1920, 1152, 2), ("b", 1920, 1152, 4)]
    cache = {"fp8": 1.0, "model": 2.0}  # GiB per megapixel, added to the rows measured with each
    rows = [PeakRow(d, w, h, f, truth(d, w, h, f) + cache[kv] * w * h / 1e6, kv)
            for (d, w, h, f), kv in zip(sizes, ("fp8", "model", "fp8", "model"))]
    model = MemoryModel.fit(rows, cache)
    assert (model.base_gib, model.dit_gib_per_mpx) == (pytest.approx(3.0), pytest.approx(4.0))
    assert model.decoder_gib_per_mpx == {"a": pytest.approx(0.5), "b": pytest.approx(2.0)}
    with pytest.raises(ValueError, match="cannot fit"):
        MemoryModel.fit([PeakRow("a", 1024, 1024, 4, 11.0, "fp8"), PeakRow("b", 1024, 1024, 4, 12.0, "fp8")], cache)
    with pytest.raises(ValueError, match="unknown kv_cache \\['fp16'\\]"):
        MemoryModel.fit([replace(r, kv_cache="fp16") for r in rows], cache)
    blended = [replace(r, peak_gib=r.peak_gib + 1.5 * i, blend_gib=1.5 * i) for i, r in enumerate(rows)]
    assert MemoryModel.fit(blended, cache) == pytest.approx(model)  # a row's recorded blend is taken off


def test_the_k_v_cache_dtype_prices_its_own_cache() -> None:
    """The same 4K request with the bf16 cache ("model", upscaler.toml's default) predicts the measured
    66.5 GiB instead of the FP8 cache's 44: 22.4 GiB more untiled, the cache difference the model's shapes give
    (tiles: in proportion to their pixels); on an 80 GB card it still runs untiled, in 60 GiB it takes two
    bands, on 24 and 16 GB cards more tiles than the FP8 cache's. Every K/V cache dtype has a size."""
    fp8_4k, bf16_4k = (MODEL.peak_gib("tcdecoder", 3840 * 2176, 1, kv) for kv in ("fp8", "model"))
    assert bf16_4k - fp8_4k == pytest.approx(22.41, abs=0.01) and MODEL.peak_gib("tcdecoder", 3840 * 2176, 1, "fp8-qk") == fp8_4k
    for usable_gib, tiles in ((80, (1, 1)), (60, (1, 2)), (22, (3, 5)), (15, (6, 8))):
        fp8, bf16 = (plan_layout(3840, 2160, usable_gib * GIB, "tiny", replace(SETTINGS, kv_cache_dtype=kv))
                     for kv in ("fp8", "model"))
        assert fp8.fits and bf16.fits and (fp8.tiles, bf16.tiles) == tiles
        same_tiles = choose_layout(3840, 2160, usable_bytes=1000 * GIB, model=MODEL, variant=TINY, kv_cache="model",
                                   overlap=64, min_tiles=fp8.tiles)
        assert same_tiles.peak_gib > fp8.peak_gib
    assert set(ELEMENT_BYTES) == set(KV_CACHE_DTYPES)


def test_a_longer_k_v_cache_is_priced_by_its_ring() -> None:
    """``kv_ratio`` sets the cache's ring (kv_ratio + 1 slices, at least 3): at 4K the FP8 cache is 22.4 GiB at
    the default 3 (4 slices), so kv_ratio 4 adds a quarter of it and 1 (3 slices) takes a quarter off; on a
    24 GB card the longer cache needs more tiles."""
    fp8_4k = MODEL.peak_gib("tcdecoder", 3840 * 2176, 1, "fp8")
    assert MODEL.peak_gib("tcdecoder", 3840 * 2176, 1, "fp8", 4) - fp8_4k == pytest.approx(22.41 / 4, abs=0.01)
    assert fp8_4k - MODEL.peak_gib("tcdecoder", 3840 * 2176, 1, "fp8", 1) == pytest.approx(22.41 / 4, abs=0.01)
    longer = replace(SETTINGS, sparsity=replace(SETTINGS.sparsity, kv_ratio=6))
    default, long_cache = (plan_layout(3840, 2160, 22 * GIB, "tiny", s) for s in (SETTINGS, longer))
    assert long_cache.fits and long_cache.tiles > default.tiles


def test_peak_rows_must_say_their_k_v_cache(tmp_path) -> None:
    """A [[peak]] row without kv_cache is refused with what to add (its peak cannot be split from the cache)."""
    from upscaler.configfiles import config_path

    table = tmp_path / "no-kv.toml"
    table.write_text(config_path("throughput").read_text().replace('kv_cache = "fp8"\n', "", 1))
    with pytest.raises(ValueError, match="row 1 lacks kv_cache, the K/V cache dtype it was measured with"):
        MemoryModel.load(str(table))


@pytest.mark.parametrize(("usable_gib", "expected"), [
    (80, (1, 1, 3840, 2160, 1)),    # the untiled 4K run fits an 80 GB card (44 GiB)
    (22, (3, 1, 3840, 768, 1)),     # a 24 GB card: three full-width bands, decoder one frame per pass
    (15, (3, 2, 2048, 768, 2)),     # a 16 GB card: six tiles, two decoder frames per pass
    (10, (3, 4, 1024, 768, 1)),     # twelve tiles
])
def test_4k_layouts_from_free_memory(usable_gib: float, expected: tuple[int, ...]) -> None:
    layout = _layout(usable_gib)
    assert (layout.rows, layout.columns, layout.tile_width, layout.tile_height, layout.decoder_frames) == expected
    assert layout.peak_gib <= MODEL.budget_gib(int(usable_gib * GIB))
    # No layout with fewer tiles fits: the choice is the fewest tiles.
    fewer = [c for c in candidate_layouts(3840, 2160, 64, 128) if c[0] * c[1] < layout.tiles]
    for rows, columns, w, h in fewer:
        assert _least_peak(3840, 2160, rows, columns, w, h) > MODEL.budget_gib(int(usable_gib * GIB))


def test_bands_beat_squares_and_the_grid_covers_the_frame() -> None:
    """At 22 GiB three 3840x768 bands fit where square tiles would need more tiles and more pixels."""
    bands = _layout(22)
    squares = [c for c in candidate_layouts(3840, 2160, 64, 128) if c[2] == c[3]]
    budget = MODEL.budget_gib(22 * GIB)
    fitting_squares = [c for c in squares if MODEL.peak_gib("tcdecoder", c[2] * c[3], 1, KV) <= budget]
    assert min(c[0] * c[1] for c in fitting_squares) > bands.tiles
    tiles = tile_grid(2160, 3840, bands.tile_width, bands.overlap, 16, bands.tile_height)
    assert len(tiles) == 3 and all(t.width == 3840 and t.height <= 768 for t in tiles)
    assert all(b.y <= a.y + a.height - 64 for a, b in zip(tiles, tiles[1:]))  # neighbours overlap by >= 64 px
    assert tiles[-1].y + tiles[-1].height == 2160


def test_full_keeps_its_decoder_frames_and_tiles_1080p_at_22_gib() -> None:
    layout = _layout(22, 1920, 1080, FULL)
    assert (layout.rows, layout.columns, layout.tile_width, layout.tile_height, layout.decoder_frames) == (1, 2, 1024, 1080, 4)
    assert _layout(40, 1920, 1080, FULL).tiles == 1


def test_nothing_fits_gives_the_smallest_peak() -> None:
    layout = _layout(2)
    assert layout.tiles > 1 and layout.blend_frames == 1 and layout.peak_gib == pytest.approx(min(
        _least_peak(3840, 2160, *c) for c in candidate_layouts(3840, 2160, 64, 128) if c[0] * c[1] > 1))
    assert not layout.fits and layout.budget_gib == pytest.approx(MODEL.budget_gib(2 * GIB))
    assert _layout(22).fits and _layout(22).budget_gib == pytest.approx(MODEL.budget_gib(22 * GIB))
    assert "(budget 19.2 GiB)" in _layout(22).describe()


def test_a_least_tile_count_where_the_frame_can_be_cut() -> None:
    """``min_tiles`` (the retry after an out-of-memory asks for 2) skips the layouts with fewer tiles: 4K in
    80 GiB, which fits untiled, is then cut into two bands; a frame too small to cut stays whole."""
    banded = choose_layout(3840, 2160, usable_bytes=80 * GIB, model=MODEL, variant=TINY, kv_cache=KV, overlap=64,
                           min_tiles=2)
    assert (banded.rows, banded.columns, banded.tile_width, banded.tile_height) == (2, 1, 3840, 1152)
    assert banded.fits and not _layout(80).tiled
    small = choose_layout(128, 72, usable_bytes=80 * GIB, model=MODEL, variant=TINY, kv_cache=KV, overlap=64, min_tiles=2)
    assert small.tiles == 1 and small.fits


def test_plan_layout_chooses_with_the_settings_it_is_given() -> None:
    """plan_layout prices with the settings the run uses, not the shipped file's: a 128 px overlap (or
    blend groups of 1 frame) changes the 4K layout in 22 GiB (three columns instead of three bands)."""
    assert plan_layout(3840, 2160, 22 * GIB, "tiny", SETTINGS) == _layout(22)
    wide = replace(SETTINGS, tiling=replace(SETTINGS.tiling, tile_overlap=128))
    layout = plan_layout(3840, 2160, 22 * GIB, "tiny", wide)
    assert (layout.rows, layout.columns, layout.overlap) == (1, 3, 128) and layout == _layout(22, overlap=128)
    single = replace(SETTINGS, tiling=replace(SETTINGS.tiling, blend_frames=1))
    assert plan_layout(3840, 2160, 22 * GIB, "tiny", single).blend_frames == 1


def raised_peaks_table(tmp_path, gib: float) -> str:
    """A copy of the shipped throughput table whose [[peak]] rows are ``gib`` GiB higher (an operator's own)."""
    from upscaler.configfiles import config_path

    speed, peaks = config_path("throughput").read_text().split("[[peak]]", 1)
    raised = re.sub(r"peak_gib = ([0-9.]+)", lambda m: f"peak_gib = {float(m.group(1)) + gib}", peaks)
    path = tmp_path / "operator-throughput.toml"
    path.write_text(f"{speed}[[peak]]{raised}")
    return str(path)


def test_plan_layout_reads_the_configured_throughput_table(tmp_path) -> None:
    """The memory model is fitted to the [[peak]] rows of settings.throughput (the miner's upscaler.throughput),
    not the shipped table's: peaks measured 6 GiB higher cut 4K in 22 GiB into more tiles."""
    own = replace(SETTINGS, throughput=raised_peaks_table(tmp_path, 6.0))
    shipped, operator = plan_layout(3840, 2160, 22 * GIB, "tiny", SETTINGS), plan_layout(3840, 2160, 22 * GIB, "tiny", own)
    assert operator == choose_layout(3840, 2160, usable_bytes=22 * GIB, model=MemoryModel.load(own.throughput),
                                     variant=TINY, kv_cache=KV, overlap=64)
    assert operator.fits and operator.tiles > shipped.tiles


def test_predicted_peak_includes_the_blend_of_a_group_beside_the_last_tile() -> None:
    """A tiled layout's peak is the tile run's plus one blend group's buffers at the output size; an
    untiled run blends nothing."""
    for usable_gib, width, height in ((22, 3840, 2160), (15, 3840, 2160), (22, 7680, 4320), (15, 1920, 1080)):
        layout = _layout(usable_gib, width, height)
        engine = MODEL.peak_gib("tcdecoder", -(-layout.tile_width // 128) * 128 * -(-layout.tile_height // 128) * 128,
                                layout.decoder_frames, KV)
        blend = blend_bytes(height, width, layout.tiles, layout.tile_height, layout.tile_width, layout.blend_frames) / GIB
        assert layout.tiled and blend > 0 and layout.blend_gib == pytest.approx(blend)
        assert layout.peak_gib == pytest.approx(engine + blend)
        assert f"blend {layout.blend_frames} frames/group" in layout.describe()
    untiled = _layout(80)
    assert not untiled.tiled and (untiled.blend_frames, untiled.blend_gib) == (0, 0.0)
    assert untiled.peak_gib == pytest.approx(MODEL.peak_gib("tcdecoder", 3840 * 2176, 1, KV))
    assert blend_groups(8) == [8, 4, 2, 1] and blend_groups(6) == [6, 3, 1] and blend_groups(1) == [1]


@pytest.mark.parametrize("usable_gib", [22, 15])
def test_4k_to_8k_fits_with_the_blend_by_more_tiles_or_a_smaller_group(usable_gib: float) -> None:
    """4K28K (7680x4320): the blend of 8 output frames alone needs ~4.7 GiB, so the layout the memory
    model chose without it (the fewest tiles whose tile run fits) would not fit with it; the chooser now
    takes more tiles or a smaller group and its whole predicted peak fits."""
    budget = MODEL.budget_gib(int(usable_gib * GIB))
    assert blend_bytes(4320, 7680, 12, 1152, 2688, 8) / GIB == pytest.approx(4.7, abs=0.05)
    layout = _layout(usable_gib, 7680, 4320)
    assert layout.tiled and layout.peak_gib <= budget
    grids = candidate_layouts(7680, 4320, 64, 128)
    fewest = min(c[0] * c[1] for c in grids if MODEL.peak_gib("tcdecoder", c[2] * -(-c[3] // 128) * 128, 1, KV) <= budget)
    assert all(_least_peak(7680, 4320, *c) - blend_bytes(4320, 7680, c[0] * c[1], c[3], c[2], 1) / GIB
               + blend_bytes(4320, 7680, c[0] * c[1], c[3], c[2], 8) / GIB > budget
               for c in grids if c[0] * c[1] == fewest)  # the old choice overflows with its blend of 8 frames
    assert layout.tiles > fewest or layout.blend_frames < 8
    assert (layout.tiles, layout.blend_frames) == {22: (14, 4), 15: (24, 2)}[usable_gib]


def test_layout_slowdown_from_measured_tiled_rows() -> None:
    speed = {"h200": 1e8, "h100": 0.5e8}  # pixels per second: the H100 at half the H200's speed
    spf = lambda device, pixels: pixels / speed[device]  # noqa: E731 - seconds per frame proportional to pixels
    rows = [TiledRow("h200", "tiny", 3840, 2160, 1024, 1024, 15, fps=1 / (2.0 * 15 * 1024 * 1024 / 1e8))]  # overhead 2
    assert layout_slowdown(3, 3840, 768, 3840, 2160, spf, rows, "h200", "tiny", 3.2) == pytest.approx(2.0 * 3 * 768 / 2160)
    # A device without tiled rows of the variant takes the overhead of another device's, against that one's speed.
    assert layout_slowdown(3, 3840, 768, 3840, 2160, spf, rows, "h100", "tiny", 3.2) == pytest.approx(2.0 * 3 * 768 / 2160)
    assert layout_slowdown(3, 3840, 768, 3840, 2160, spf, rows, "h200", "full", 3.2) == 3.2  # no rows: the default


def test_planner_estimates_tiled_plans_from_the_layout() -> None:
    table = ThroughputTable.load()
    untiled = plan(3840, 2160, 300, free_vram_bytes=80 * GIB, deadline_s=None, table=table, device="h200",
                   settings=SETTINGS)
    small = plan(3840, 2160, 300, free_vram_bytes=22 * GIB, deadline_s=None, table=table, device="h200",
                 settings=SETTINGS)
    smaller = plan(3840, 2160, 300, free_vram_bytes=15 * GIB, deadline_s=None, table=table, device="h200",
                   settings=SETTINGS)
    assert untiled.tile_size == 0 and (small.tile_size, smaller.tile_size) == (768, 768)
    assert untiled.est_seconds < small.est_seconds < smaller.est_seconds < 3.2 * untiled.est_seconds
    # Replanning after an out-of-memory (nothing free) keeps the configured square tile.
    assert plan(3840, 2160, 300, free_vram_bytes=0, deadline_s=None, table=table, device="h200",
                tile_size=1024).tile_size == 1024


def test_cap_arithmetic() -> None:
    assert vram.cap_fraction(22 * GIB, 80 * GIB) == pytest.approx(0.275)
    assert vram.cap_fraction(200 * GIB, 80 * GIB) == 1.0
    with pytest.raises(ValueError):
        vram.cap_fraction(0, 80 * GIB)
    # usable = held + free, at most the cap; free for more = usable - held.
    assert vram.capped_usable(real_free=70 * GIB, reserved=5 * GIB, cap_bytes=22 * GIB) == 22 * GIB
    assert vram.capped_usable(real_free=10 * GIB, reserved=5 * GIB, cap_bytes=22 * GIB) == 15 * GIB
    assert vram.capped_usable(real_free=70 * GIB, reserved=5 * GIB, cap_bytes=None) == 75 * GIB


def test_cap_is_inert_off_cuda() -> None:
    cpu = torch.device("cpu")
    vram.apply_cap(cpu, 22)
    assert vram.cap_bytes(cpu) is None and vram.usable_bytes(cpu) is None
    with vram.capped(cpu, 22):
        assert vram.cap_bytes(cpu) is None


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """An 80 GiB ``cuda:0`` as far as :mod:`upscaler.vram` asks (CPU machine): the allocator fractions set."""
    from types import SimpleNamespace

    fractions: list[tuple[float, int]] = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, index: fractions.append((f, index)))
    monkeypatch.setattr(vram, "_caps", {})
    return fractions


def test_a_cap_replaces_the_one_before_and_one_at_or_above_the_card_means_none(fake_gpu, caplog) -> None:
    gpu = torch.device("cuda", 0)
    vram.apply_cap(gpu, 22)
    assert vram.cap_bytes(gpu) == 22 * GIB and fake_gpu[-1] == (pytest.approx(0.275), 0)
    vram.apply_cap(gpu, 200)  # more than the card: no cap (the 22 GiB cap used to stay)
    assert vram.cap_bytes(gpu) is None and fake_gpu[-1] == (1.0, 0)
    assert "max_vram_gib=200.0 is not below this GPU's 80.0 GiB: no cap" in caplog.text
    vram.apply_cap(gpu, 22)
    vram.apply_cap(gpu, 80)  # the whole card: no cap either
    assert vram.cap_bytes(gpu) is None and fake_gpu[-1] == (1.0, 0)
    vram.apply_cap(gpu, 15)
    vram.apply_cap(gpu, 0)
    calls = len(fake_gpu)
    vram.apply_cap(gpu, 0)  # nothing to remove
    assert vram.cap_bytes(gpu) is None and len(fake_gpu) == calls


def test_capped_holds_exactly_its_cap_and_restores_the_one_before(fake_gpu) -> None:
    gpu = torch.device("cuda", 0)
    vram.apply_cap(gpu, 30)  # e.g. max_vram_gib applied at load
    for gib, inside in ((22, 22 * GIB), (0, None), (200, None)):
        with vram.capped(gpu, gib):
            assert vram.cap_bytes(gpu) == inside
        assert vram.cap_bytes(gpu) == 30 * GIB
    with pytest.raises(RuntimeError), vram.capped(gpu, 15):
        raise RuntimeError("a case failed")
    assert vram.cap_bytes(gpu) == 30 * GIB
    vram.apply_cap(gpu, 0)
    with vram.capped(gpu, 15):
        assert vram.cap_bytes(gpu) == 15 * GIB
    assert vram.cap_bytes(gpu) is None


def test_cli_tiling_arguments() -> None:
    base = TilingSettings(tile_size=0, tile_overlap=64)
    assert tiling_from_args(base, None, None, None, None) == base
    assert tiling_from_args(base, None, None, None, 22.0) == TilingSettings(0, 64, 0, auto=True)
    assert tiling_from_args(base, "auto", None, 96, None) == TilingSettings(0, 96, 0, auto=True)
    assert tiling_from_args(base, 1024, None, None, 22.0) == TilingSettings(1024, 64, 0, auto=False)
    assert tiling_from_args(base, 3840, 768, None, None).height == 768
    with pytest.raises(ValueError, match="tile_height"):
        replace(SETTINGS, tiling=TilingSettings(3840, 64, 700)).validate()
    with pytest.raises(ValueError, match="max_vram_gib"):
        replace(SETTINGS, max_vram_gib=-1).validate()


def test_calibration_reference_of_a_tiled_clip_is_its_layout_estimate() -> None:
    """A finished tiled clip is calibrated against the estimate of its own layout, the one the planner
    used, so a calibrated tiled plan does not count the layout's speed-up twice."""
    from upscaler.planner import tiled_slowdown_for

    table = ThroughputTable.load()
    bands = tiled_slowdown_for(table, "h100", "tiny", 3840, 2160, 3, 3840, 768)
    squares = tiled_slowdown_for(table, "h100", "tiny", 3840, 2160, 15, 1024, 1024)
    assert 1.0 < bands < squares
    assert bands == pytest.approx(9.37 / 7.85, rel=0.08)  # the measured bands (two rows' mean overhead)
    # An unmeasured GPU (a 24 GB card) takes the H100's tiled rows, as it takes its untiled ones; the H200
    # (untiled rows, no tiled ones) and the CPU take the H100 rows' overhead against their own speed.
    assert tiled_slowdown_for(table, "a10", "tiny", 3840, 2160, 3, 3840, 768) == pytest.approx(bands)
    assert 1.0 < tiled_slowdown_for(table, "h200", "tiny", 3840, 2160, 3, 3840, 768) < 1.5
    assert tiled_slowdown_for(table, "cpu", "tiny", 3840, 2160, 3, 3840, 768) != table.tiled_slowdown
    assert tiled_slowdown_for(table, "h100", "tiny-long", 3840, 2160, 3, 3840, 768) == table.tiled_slowdown  # no rows
    assert replace(table, tiled_rows=()).fingerprint() != table.fingerprint()


def test_cli_runs_capped_and_banded(tmp_path) -> None:
    """flashvsr-upscale on the CPU: --max-vram has no GPU to cap (untiled), --tile-size/--tile-height tile in bands."""
    import json

    from tests.media import make_clip
    from upscaler.cli import main

    src = make_clip(tmp_path / "in.mp4", width=128, height=96, frames=5)
    common = [str(src), "--scale", "2", "--weights", "random-small", "--device", "cpu", "--log-level", "WARNING"]
    assert main([*common[:1], str(tmp_path / "a.mp4"), *common[1:], "--max-vram", "22", "--report", str(tmp_path / "a.json")]) == 0
    assert main([*common[:1], str(tmp_path / "b.mp4"), *common[1:], "--tile-size", "256", "--tile-height", "128",
                 "--report", str(tmp_path / "b.json")]) == 0
    capped, bands = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert (capped["tiled"], capped["tiles"]) == (False, 1)
    assert (bands["tiled"], bands["tiles"], bands["tile_width"], bands["tile_height"]) == (True, 2, 256, 128)
    assert bands["frames"] == capped["frames"] == 5


def test_a_clip_that_fits_with_fewer_decoder_frames_is_planned_untiled() -> None:
    """1080p Tiny peaks at 19.8 GiB; in 19 GiB it fits untiled with fewer decoder frames per pass, so the
    plan is untiled at the untiled speed (not tiled, not slowed down)."""
    table = ThroughputTable.load()
    tight = plan(1920, 1080, 300, free_vram_bytes=19 * GIB, deadline_s=None, table=table, device="h200",
                 settings=SETTINGS)
    roomy = plan(1920, 1080, 300, free_vram_bytes=80 * GIB, deadline_s=None, table=table, device="h200",
                 settings=SETTINGS)
    assert tight.tile_size == 0 and tight.est_seconds == roomy.est_seconds
    assert _layout(19, 1920, 1080).tiles == 1 and _layout(19, 1920, 1080).decoder_frames < 4
