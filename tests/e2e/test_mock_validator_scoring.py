"""The mock validator's own parts on tiny clips: clip making as the validator does, and the hard checks."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from miner.mock_validator import metrics
from miner.mock_validator.clips import bicubic_baseline, make_clips
from miner.mock_validator.report import ClipResult, Report, RoundResult, ValidatorResult
from miner.mock_validator.scoring import Reference, score_clip
from miner.mock_validator.settings import load_settings, task_geometry
from miner.mock_validator.videoio import Encoding, encode_rgb, probe, read_planes

SECONDS = 0.5  # 15 frames


@pytest.fixture(scope="module")
def settings() -> dict:
    return load_settings(overrides={"metrics": {"vmaf": metrics.vmaf_available()}})


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, settings: dict) -> Reference:
    root = tmp_path_factory.mktemp("clips")
    geometry = task_geometry(settings, "SD2HD", small=True)
    (ref,) = make_clips(root, root, geometry, 1, SECONDS, settings, seed=1)
    return ref


def _rgb_frames(path: Path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_clips_are_made_like_the_validator(clip: Reference) -> None:
    ref, inp = clip.info, probe(clip.input_path)
    assert (ref.codec, ref.pix_fmt, ref.fps, ref.frames) == ("h264", "yuv420p", Fraction(30), 15)
    assert (ref.width, ref.height) == (320, 180)
    assert (inp.width, inp.height, inp.fps, inp.frames) == (160, 90, Fraction(30), 15)
    frames = _rgb_frames(clip.path)
    assert float(np.std(frames[0])) > 20, "procedural content has structure, not a flat field"
    assert float(np.abs(frames[-1].astype(int) - frames[0]).mean()) > 5, "the scene moves"


def test_bicubic_baseline_passes_every_hard_check(clip: Reference, settings: dict) -> None:
    score = score_clip(bicubic_baseline(clip, settings), clip, settings, max_size_mb=100, seed=0)
    assert score.ok, score.failed()
    assert {c.name for c in score.checks} >= {"decodable", "geometry", "frames", "fps", "size", "encoding", "chroma"}
    assert 15 < score.psnr < 60 and 0.3 < score.ssim < 1.0
    if settings["metrics"]["vmaf"]:
        assert score.vmaf is not None and 0 < score.vmaf < 100


@pytest.mark.parametrize("fault, check", [
    ("h264", "encoding"), ("wrong_size", "geometry"), ("drop_frame", "frames"), ("grey", "chroma"), ("fps", "fps")])
def test_faulty_outputs_fail_their_check(fault: str, check: str, clip: Reference, settings: dict,
                                         tmp_path: Path) -> None:
    frames = _rgb_frames(clip.path)
    out, fps, codec, (w, h) = tmp_path / "out.mp4", 30, "libx265", (320, 180)
    if fault == "h264":
        codec = "libx264"
    elif fault == "wrong_size":
        w, h = 322, 180
        frames = [np.pad(f, ((0, 0), (0, 2), (0, 0)), mode="edge") for f in frames]
    elif fault == "drop_frame":
        frames = frames[:-1]
    elif fault == "grey":
        frames = [np.repeat(f.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8) for f in frames]
    elif fault == "fps":
        fps = 25
    encode_rgb(frames, out, w, h, fps, Encoding(codec, "ultrafast", 18))
    score = score_clip(out, clip, settings, max_size_mb=100, seed=0)
    failed = {c.name for c in score.checks if not c.ok}
    assert not score.ok and failed == {check}, score.failed()


def test_oversized_output_fails_the_size_check(clip: Reference, settings: dict, tmp_path: Path) -> None:
    out = tmp_path / "big.mp4"
    noise = np.random.default_rng(0).integers(0, 256, (15, 180, 320, 3), dtype=np.uint8)  # incompressible
    encode_rgb(noise, out, 320, 180, 30, Encoding("libx265", "ultrafast", 0))
    assert out.stat().st_size > 8 * clip.input_path.stat().st_size
    score = score_clip(out, clip, settings, max_size_mb=100, seed=0)
    assert "size" in {c.name for c in score.checks if not c.ok}


def test_metrics_on_identical_and_noisy_luma() -> None:
    y = torch.rand(3, 1, 48, 64) * 255
    assert metrics.psnr(y, y) == metrics.PSNR_CAP and metrics.ssim(y, y) == pytest.approx(1.0, abs=1e-5)
    noise = torch.randn_like(y)
    light, heavy = (y + noise * 10).clamp(0, 255), (y + noise * 40).clamp(0, 255)
    assert 26 < metrics.psnr(y, light) < 30  # 20*log10(255/10) = 28.1 dB, a little more after clamping
    assert 1 > metrics.ssim(y, light) > metrics.ssim(y, heavy) > 0


def test_saturation_average_matches_signalstats_definition() -> None:
    u = np.full((4, 4), 128 + 3, np.uint8)
    v = np.full((4, 4), 128 + 4, np.uint8)
    assert metrics.saturation_average(u, v) == 5.0


def test_read_planes_returns_yuv420p_shapes(clip: Reference) -> None:
    y, u, v = next(read_planes(clip.path))
    assert y.shape == (180, 320) and u.shape == v.shape == (90, 160)


def test_report_json_and_verdict(tmp_path: Path) -> None:
    rnd = RoundResult("synthetic", "r1", "SD2HD", 200, "", 1.5, 135.0,
                      clips=[ClipResult(0, "http://x/a.mp4", error="refused: too late")])
    report = Report("label", {"task": "SD2HD"}, [ValidatorResult("5Fabc", "legacy", rounds=[rnd])])
    assert not report.ok and report.summary()["no_result"] == 1
    report.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"]["ok"] is False and data["validators"][0]["rounds"][0]["met_deadline"] is True
    assert "RESULT: FAIL" in report.table() and "refused: too late" in report.table()
