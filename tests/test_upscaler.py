"""The upscaler end to end on the CPU: small random checkpoints in the official formats, loaded from a
directory through the real loader; real clips decoded and encoded with PyAV."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import pytest
import torch

from tests.media import make_clip, make_corrupt, make_size_change, make_text_file, make_zero_frame
from upscaler.api import Upscaler
from upscaler.errors import InputVideoError, UpscaleCancelled
from upscaler.geometry import Geometry
from upscaler.settings import TilingSettings, load_settings
from upscaler.timing import StageTimer
from upscaler.video import FrameReader, probe


@pytest.fixture(scope="module")
def upscaler(small_checkpoints) -> Upscaler:
    files = small_checkpoints("v1.1")
    settings = load_settings(weights=str(files.dit.parent), model_preset="small", device="cpu")
    return Upscaler.load(settings)


def _frames(upscaler: Upscaler, src: Path, out_size: tuple[int, int], variant: str = "tiny") -> torch.Tensor:
    info = probe(src)
    geometry = Geometry.for_target((info.width, info.height), out_size, upscaler.settings.spatial_multiple)
    chunks = upscaler.upscale_frames(src, geometry, upscaler.settings.variant(variant), timer=StageTimer(torch.device("cpu")))
    return torch.cat(list(chunks))


@pytest.mark.parametrize("frames", [1, 5, 21, 22, 29, 30])
def test_one_output_frame_per_input_frame(upscaler, tmp_path, frames):
    """The schedule's time padding never adds or drops frames, for every clip length."""
    src = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=frames)
    out = _frames(upscaler, src, (128, 96))
    assert out.shape == (frames, 96, 128, 3) and out.dtype == torch.uint8


def test_odd_size_file_keeps_geometry_fps_and_audio(upscaler, tmp_path):
    src = make_clip(tmp_path / "odd.mp4", width=67, height=37, frames=13, fps=Fraction(30000, 1001), audio=True)
    report = upscaler.upscale_file(src, tmp_path / "out.mp4", scale=2, codec="hevc")
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frames) == (134, 74, 13)
    assert info.fps == Fraction(30000, 1001) and info.has_audio and info.codec == "hevc"
    assert report.frames == 13 and report.out_size == (134, 74)
    assert {"lq_proj", "dit", "decoder", "color_fix", "encode", "decode_wait", "total"} <= set(report.seconds)
    assert 0.0 <= report.seconds["decode_wait"] <= report.seconds["total"]


def test_explicit_target_size(upscaler, tmp_path):
    """Vidaio's targets are explicit sizes; non-integer ratios are allowed too."""
    src = make_clip(tmp_path / "in.mp4", width=64, height=36, frames=9)
    upscaler.upscale_file(src, tmp_path / "out.mp4", width=200, height=100)
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frames) == (200, 100, 9)


def test_full_variant_runs_the_wan_vae_decoder(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=10)
    out = _frames(upscaler, src, (128, 96), variant="full")
    assert out.shape == (10, 96, 128, 3)
    assert not torch.equal(out, _frames(upscaler, src, (128, 96), variant="tiny")), "a different decoder ran"


def test_deterministic_per_seed(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=9)
    assert torch.equal(_frames(upscaler, src, (128, 96)), _frames(upscaler, src, (128, 96)))


def test_one_tile_covering_the_frame_equals_the_untiled_run(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=9)
    untiled = _frames(upscaler, src, (128, 96))
    base = upscaler.settings
    try:
        upscaler.settings = replace(base, tiling=TilingSettings(tile_size=128, tile_overlap=32))
        tiled = _frames(upscaler, src, (128, 96))
    finally:
        upscaler.settings = base
    assert torch.equal(tiled, untiled)


def test_several_tiles_keep_geometry(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=96, height=64, frames=9)
    base = upscaler.settings
    try:
        upscaler.settings = replace(base, tiling=TilingSettings(tile_size=128, tile_overlap=64))
        report = upscaler.upscale_file(src, tmp_path / "out.mp4", scale=2)
    finally:
        upscaler.settings = base
    info = probe(tmp_path / "out.mp4")
    assert report.tiled and (info.width, info.height, info.frames) == (192, 128, 9)


def test_tiles_read_the_input_decoded_once(upscaler, tmp_path, monkeypatch):
    """The first tile decodes the input and records it; every other tile reads its crop from the record
    and gives the same frames as when it decodes the input itself."""
    import upscaler.tiled as tiled_module
    from upscaler.tiled import RawFrames, TiledRun

    decodes = []

    class CountingReader(FrameReader):
        def __iter__(self):
            decodes.append(self.path.name)
            return super().__iter__()

    monkeypatch.setattr(tiled_module, "FrameReader", CountingReader)
    src = make_clip(tmp_path / "in.mp4", width=128, height=64, frames=9)
    geometry = Geometry.for_target((128, 64), (256, 128), upscaler.settings.spatial_multiple)
    variant = upscaler.settings.variant("tiny")
    settings = replace(upscaler.settings, tiling=TilingSettings(tile_size=128, tile_overlap=64))
    run = TiledRun(upscaler.engine(variant, 128 * 128), settings, geometry, variant, upscaler.device, upscaler.dtype)
    timer = StageTimer(torch.device("cpu"))
    outputs = [(tile, RawFrames(tmp_path / f"tile{index}.u8", tile.height, tile.width)) for index, tile in enumerate(run.tiles)]
    for _ in run._run_tiles(src, tmp_path, outputs, timer, None):
        pass
    assert len(outputs) == len(run.tiles) > 2 and decodes == ["in.mp4"]
    for index, (tile, recorded) in enumerate(outputs[1:], start=1):
        fresh = RawFrames(tmp_path / f"fresh{index}.u8", tile.height, tile.width)
        for _ in run._run_tile(FrameReader(src), tile, fresh, timer, None):
            pass
        assert fresh.frames == recorded.frames == 9
        assert torch.equal(fresh.read(0, fresh.frames), recorded.read(0, recorded.frames))


@pytest.mark.parametrize("maker", [make_corrupt, make_zero_frame, make_text_file, make_size_change])
def test_bad_input_is_a_clear_error_and_leaves_nothing(upscaler, tmp_path, maker):
    src = maker(tmp_path / "bad.mp4")
    dst = tmp_path / "out.mp4"
    with pytest.raises(InputVideoError):
        upscaler.upscale_file(src, dst, scale=2)
    assert not dst.exists() and not list(tmp_path.glob("*.tmp*"))


def test_cancel_stops_and_leaves_nothing(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=60)
    dst = tmp_path / "out.mp4"
    calls = []

    def cancel_on_third_step() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(UpscaleCancelled):
        upscaler.upscale_file(src, dst, scale=2, should_cancel=cancel_on_third_step)
    assert not dst.exists() and len(calls) == 3


def test_progress_reaches_every_frame(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=30)
    seen = []
    upscaler.upscale_file(src, tmp_path / "out.mp4", scale=2, progress=seen.append)
    assert seen[-1].frames_done == 30 and [p.frames_done for p in seen] == sorted(p.frames_done for p in seen)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30
