"""Tiled runs with the background tile store, bands, and the seam error against the untiled output
(random small weights on the CPU, real clips through PyAV)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from tests.media import make_clip
from upscaler.api import Upscaler
from upscaler.frame_source import lq_batches
from upscaler.blend_memory import blend_bytes
from upscaler.geometry import Geometry, round_up
from upscaler.lq_frames import LQFrames
from upscaler.resize import frames_to_host
from upscaler.seams import coverage, seam_error, seam_mask
from upscaler.settings import TilingSettings, load_settings
from upscaler.tile_plan import MemoryModel, choose_layout
from upscaler.tiled import RawFrames, TiledRun
from upscaler.tiling import FeatherBlender, Tile, tile_grid
from upscaler.timing import StageTimer
from upscaler.video import FrameReader

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def upscaler(small_checkpoints) -> Upscaler:
    files = small_checkpoints("v1.1")
    return Upscaler.load(load_settings(weights=str(files.dit.parent), model_preset="small", device="cpu"))


def _tiled(upscaler: Upscaler, src, geometry: Geometry, tiling: TilingSettings) -> tuple[torch.Tensor, list[Tile]]:
    variant = upscaler.settings.variant("tiny")
    run = TiledRun(upscaler.engine(variant, tiling.tile_size * tiling.height), replace(upscaler.settings, tiling=tiling),
                   geometry, variant, CPU, upscaler.dtype)
    return torch.cat(list(run.frames(src, timer=StageTimer(CPU)))), run.tiles


def _reference(upscaler: Upscaler, src, geometry: Geometry, tiles: list[Tile], ramp: int) -> torch.Tensor:
    """Tile by tile through the untiled machinery (decode, engine, host copies in this thread), then
    one feathered blend of all frames: what a tiled run computes, without its files and threads."""
    variant = upscaler.settings.variant("tiny")
    multiple = upscaler.settings.spatial_multiple
    outputs = []
    for tile in tiles:
        engine = upscaler.engine(variant, round_up(tile.width, multiple) * round_up(tile.height, multiple))
        batches = lq_batches(FrameReader(src), geometry, device=CPU, dtype=upscaler.dtype,
                             pad_mode=upscaler.settings.pad_mode, multiple=multiple, tile=tile)
        chunks = engine.run(LQFrames(batches), (tile.width, tile.height),
                            (round_up(tile.width, multiple), round_up(tile.height, multiple)), timer=StageTimer(CPU))
        outputs.append(torch.cat(list(frames_to_host(chunks, StageTimer(CPU)))))
    blender = FeatherBlender((outputs[0].shape[0], 3, geometry.out_height, geometry.out_width), ramp)
    for tile, frames in zip(tiles, outputs):
        blender.add(tile, frames.permute(0, 3, 1, 2))
    return blender.result().round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def test_threaded_store_and_bands_give_the_reference_output(upscaler, tmp_path, monkeypatch):
    """Bands of 256x128 over a 256x384 frame: every tile frame is written by the store thread, and the
    blended output equals the one built tile by tile in one thread."""
    writers: set[str] = set()
    append = RawFrames.append

    def recording_append(self, frames):
        writers.add(threading.current_thread().name.split("_")[0])
        return append(self, frames)

    monkeypatch.setattr(RawFrames, "append", recording_append)
    src = make_clip(tmp_path / "in.mp4", width=128, height=192, frames=9)
    geometry = Geometry.for_target((128, 192), (256, 384), upscaler.settings.spatial_multiple)
    tiling = TilingSettings(tile_size=256, tile_overlap=32, tile_height=128)
    tiled, tiles = _tiled(upscaler, src, geometry, tiling)
    assert len(tiles) == 4 and all(t.width == 256 and t.height <= 128 for t in tiles)
    assert "tile-store" in writers and writers <= {"tile-store", "MainThread"}  # MainThread: the input record
    monkeypatch.setattr(RawFrames, "append", append)
    expected = _reference(upscaler, src, geometry, tiles, ramp=32)
    assert tiled.shape == (9, 384, 256, 3) and torch.equal(tiled, expected)


def test_seam_error_separates_seams_from_the_rest() -> None:
    tiles = tile_grid(32, 64, 32, 8, 8)  # three 32 px columns overlapping by >= 8 px
    seams = seam_mask(32, 64, tiles, margin=2)
    assert (coverage(32, 64, tiles) >= 2).sum() < seams.sum() < 32 * 64
    base = torch.full((2, 32, 64, 3), 100, dtype=torch.uint8)
    off = base.clone()
    off[:, seams] += 10  # an error only at the seams
    error = seam_error(off, base, tiles, margin=2)
    assert error["away"] == {"psnr_db": float("inf"), "mean_abs": 0.0, "max_abs": 0.0, "pixels": int((~seams).sum())}
    assert error["seams"]["max_abs"] == 10.0 and error["seams"]["psnr_db"] == pytest.approx(28.13, abs=0.01)
    assert error["all"]["pixels"] == 32 * 64 and error["all"]["max_abs"] == 10.0
    # Tiles that only touch (no overlap) still have seams: the band either side of the shared edge.
    touching = [Tile(0, 0, 32, 32), Tile(0, 32, 32, 32)]
    assert seam_mask(32, 64, touching, margin=4)[:, 28:36].all() and seam_mask(32, 64, touching, margin=4).sum() == 32 * 8
    with pytest.raises(ValueError, match="differ in shape"):
        seam_error(off[:1], base, tiles)


def test_overlap_keeps_the_tiled_output_at_the_untiled_output_away_from_seams(upscaler, tmp_path):
    """The bench's seam comparison, same weights, 384x256 output in 256x128 bands: with the 32 px overlap
    the output away from the seams is the untiled output to +-1 (uint8 rounding; measured: 67.4 dB), the
    seams within 3 (measured: max 2, 54.9 dB); without overlap the seams are far worse (measured: max 12)."""
    from scripts.bench import seam_comparison

    src = make_clip(tmp_path / "in.mp4", width=128, height=192, frames=9)
    geometry = Geometry.for_target((128, 192), (256, 384), upscaler.settings.spatial_multiple)
    rows = seam_comparison(upscaler, src, geometry, upscaler.settings.variant("tiny"),
                           TilingSettings(tile_size=256, tile_overlap=32, tile_height=128), [0])
    errors = {row["overlap"]: row for row in rows}
    assert sorted(errors) == [0, 32] and errors[32]["tiles"] == 4 and errors[32]["frames"] == 9
    assert errors[32]["away"]["max_abs"] <= 1.0 and errors[32]["away"]["psnr_db"] >= 60.0
    assert errors[32]["seams"]["max_abs"] <= 3.0 and errors[32]["seams"]["psnr_db"] >= 50.0
    assert errors[0]["seams"]["max_abs"] >= 3 * errors[32]["seams"]["max_abs"]
    assert errors[0]["seams"]["psnr_db"] <= errors[32]["seams"]["psnr_db"] - 5.0


def test_blending_starts_during_the_last_tile(upscaler, tmp_path, monkeypatch):
    """With stores completing at once (depth 0), groups are blended and handed to the encoder while the
    last tile still runs, and the output still equals the one-thread reference."""
    import upscaler.tiled as tiled_module

    monkeypatch.setattr(tiled_module, "STORE_DEPTH", 0)
    stored_when_blended: list[int] = []
    blend = TiledRun._blend

    def recording_blend(self, files, tiles, count):
        stored_when_blended.append(files[-1][1].frames)
        return blend(self, files, tiles, count)

    monkeypatch.setattr(TiledRun, "_blend", recording_blend)
    src = make_clip(tmp_path / "in.mp4", width=128, height=128, frames=29)
    geometry = Geometry.for_target((128, 128), (256, 256), upscaler.settings.spatial_multiple)
    tiled, tiles = _tiled(upscaler, src, geometry, TilingSettings(tile_size=256, tile_overlap=32, tile_height=128))
    assert len(tiles) == 3 and tiled.shape == (29, 256, 256, 3)
    assert len(stored_when_blended) == 4 and min(stored_when_blended) < 29  # 8+8+8+5 frames, the first before the end
    monkeypatch.setattr(TiledRun, "_blend", blend)
    assert torch.equal(tiled, _reference(upscaler, src, geometry, tiles, ramp=32))


def test_auto_tiles_use_the_configured_throughput_table(small_checkpoints, tmp_path, monkeypatch):
    """An upscaler with its own throughput table (settings.throughput) plans auto tiles with that table's
    [[peak]] rows: the layout plan_layout gives for the same settings, not the shipped table's."""
    import upscaler.api as api_module
    from tests.test_tile_plan import raised_peaks_table
    from upscaler.tile_plan import plan_layout

    settings = load_settings(weights=str(small_checkpoints("v1.1").dit.parent), model_preset="small", device="cpu",
                             throughput=raised_peaks_table(tmp_path, 6.0))
    settings = replace(settings, tiling=replace(settings.tiling, auto=True))
    monkeypatch.setattr(api_module.vram, "usable_bytes", lambda device: 22 * 2**30)
    geometry = Geometry.for_target((960, 540), (3840, 2160), settings.spatial_multiple)
    tiling, _ = Upscaler.load(settings).plan_tiles(geometry, settings.variant("tiny"))
    own, shipped = (plan_layout(3840, 2160, 22 * 2**30, "tiny", s) for s in (settings, replace(settings, throughput="throughput")))
    assert (tiling.tile_size, tiling.height) == (own.tile_width, own.tile_height) != (shipped.tile_width, shipped.tile_height)


def test_the_layouts_blend_group_reaches_the_run(upscaler, tmp_path, monkeypatch):
    """Tiles chosen from memory carry the layout's blend group into the run (4K -> 8K in 22 GiB: groups of
    4 frames, see test_tile_plan); a run blending 3 frames at a time blends 29 frames in 10 groups and
    gives the same output as the one-thread reference."""
    import upscaler.api as api_module

    monkeypatch.setattr(api_module.vram, "usable_bytes", lambda device: 22 * 2**30)
    monkeypatch.setattr(upscaler, "settings", replace(upscaler.settings, kv_cache_dtype="fp8",
                                                      tiling=replace(upscaler.settings.tiling, auto=True)))
    geometry = Geometry.for_target((3840, 2160), (7680, 4320), upscaler.settings.spatial_multiple)
    tiny = upscaler.settings.variant("tiny")
    tiling, variant = upscaler.plan_tiles(geometry, tiny)
    assert (tiling.tile_size, tiling.height, tiling.blend_frames) == (1152, 2304, 4)
    # A layout handed to the run (the miner's retry after an out-of-memory) is run as it is, memory unread.
    layout = choose_layout(7680, 4320, usable_bytes=22 * 2**30, model=MemoryModel.load(), variant=tiny,
                           kv_cache=upscaler.settings.kv_cache_dtype,
                           overlap=upscaler.settings.tiling.tile_overlap)
    monkeypatch.setattr(api_module.vram, "usable_bytes", lambda device: pytest.fail("a given layout reads no memory"))
    assert upscaler.plan_tiles(geometry, tiny, layout) == (tiling, variant)
    monkeypatch.undo()

    groups: list[int] = []
    blend = TiledRun._blend

    def recording_blend(self, files, tiles, count):
        groups.append(count)
        return blend(self, files, tiles, count)

    monkeypatch.setattr(TiledRun, "_blend", recording_blend)
    src = make_clip(tmp_path / "in.mp4", width=128, height=128, frames=29)
    geometry = Geometry.for_target((128, 128), (256, 256), upscaler.settings.spatial_multiple)
    tiled, tiles = _tiled(upscaler, src, geometry, TilingSettings(256, 32, 128, blend_frames=3))
    assert groups == [3] * 9 + [2]
    monkeypatch.setattr(TiledRun, "_blend", blend)
    assert torch.equal(tiled, _reference(upscaler, src, geometry, tiles, ramp=32))


def test_every_bench_case_runs_under_exactly_its_own_cap(upscaler, tmp_path, monkeypatch):
    """flashvsr-bench runs each case (its warm-up and its measured run) under its own cap, none for a case
    without one, whatever case came before, and leaves the process's own cap as it found it (the cap
    state faked: the CPU has none)."""
    from types import SimpleNamespace

    from scripts.bench import Case, run_case
    from upscaler import vram

    state: dict[str, int | None] = {"cap": 7 * 2**30}  # e.g. max_vram_gib applied when the models loaded
    monkeypatch.setattr(vram, "cap_bytes", lambda device: state["cap"])
    monkeypatch.setattr(vram, "apply_cap", lambda device, gib: state.update(cap=int(gib * 2**30) or None))
    seen: list[int | None] = []
    upscale = upscaler.upscale_file
    monkeypatch.setattr(upscaler, "upscale_file", lambda *args, **kwargs: (seen.append(state["cap"]),
                                                                          upscale(*args, **kwargs))[1])
    task = SimpleNamespace(value="SD24K", input_size=(128, 96), output_size=(256, 192))
    src = make_clip(tmp_path / "in.mp4", width=128, height=96, frames=9)
    for gib in (22.0, 0.0, 15.0):
        row = run_case(upscaler, Case("tiny", task, 9, auto_tiles=bool(gib), max_vram_gib=gib), src, src, tmp_path,
                       "h264", None)
        assert "error" not in row
    assert seen == [22 * 2**30] * 2 + [None] * 2 + [15 * 2**30] * 2 and state["cap"] == 7 * 2**30


def test_bench_rows_and_seam_rows_on_the_cpu(upscaler, tmp_path):
    """flashvsr-bench's case runner and seam comparison (what the GPU measurement calls) on a small clip:
    the row names the tiling it ran with and the planner's estimate; a capped case without CUDA runs
    untiled and has no seam rows."""
    from types import SimpleNamespace

    from scripts.bench import Case, run_case, seam_rows
    from upscaler.planner import ThroughputTable

    task = SimpleNamespace(value="SD24K", input_size=(128, 96), output_size=(256, 192))
    src = make_clip(tmp_path / "in.mp4", width=128, height=96, frames=9)
    bands = Case("tiny", task, 9, tile_size=256, tile_height=128)
    row = run_case(upscaler, bands, src, src, tmp_path, "h264", None, ThroughputTable.load())
    blend = blend_bytes(192, 256, 2, 128, 256, TilingSettings.blend_frames) / 2**30
    assert row["tiling"] == {"tile_width": 256, "tile_height": 128, "overlap": 64, "tiles": 2, "decoder": "tcdecoder",
                             "model_width": 256, "model_height": 128, "decoder_frames_per_pass": 4,
                             "blend_frames": TilingSettings.blend_frames, "blend_gib": round(blend, 3)}
    assert row["frames"] == 9 and row["planner"]["device"] == "cpu" and row["planner"]["est_s"] > 0
    assert {"tile_store", "tile_store_wait", "tile_blend"} <= set(row["ms_per_frame"])
    seams = seam_rows(upscaler, bands, src, [0])
    assert [(r["overlap"], r["tiles"]) for r in seams] == [(64, 2), (0, 2)]
    assert seams[0]["away"]["max_abs"] <= 1.0 and seams[1]["seams"]["max_abs"] > seams[0]["seams"]["max_abs"]
    capped = Case("tiny", task, 9, auto_tiles=True, max_vram_gib=22.0)
    assert run_case(upscaler, capped, src, src, tmp_path, "h264", None)["tiling"]["tiles"] == 1
    assert seam_rows(upscaler, capped, src, []) == []
