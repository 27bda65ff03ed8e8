"""``flashvsr-quality`` on the CPU with random-small weights: both settings run on real clips (PyAV), each
output is scored against its reference as the mock validator scores, and the two outputs are compared."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from miner.mock_validator.videoio import Encoding, probe, rescale
from scripts.quality import Setting, main
from upscaler.video.synthetic import write_test_clip

FRAMES = 13


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    """A 128x96 reference and its 2x-downscaled input, made as the validator makes them."""
    root = tmp_path_factory.mktemp("quality-clips")
    reference = write_test_clip(root / "scene_hr.mp4", 128, 96, FRAMES)
    clip = root / "scene.mp4"
    rescale(reference, clip, 64, 48, Encoding("libx264", "ultrafast", 18))
    return clip, reference


def test_setting_parsing() -> None:
    setting = Setting.parse("precision=fp8,fp8_layers=self_qkv+ffn_up,compile=true,seed=3")
    assert setting.overrides == {"precision": "fp8", "fp8_layers": ("self_qkv", "ffn_up"), "compile": True, "seed": 3}
    with pytest.raises(argparse.ArgumentTypeError, match="top-level upscaler key"):
        Setting.parse("sparsity=3")
    with pytest.raises(argparse.ArgumentTypeError):
        Setting.parse("precision")
    assert Setting.parse("max_vram_gib=22.5,compile=off").overrides == {"max_vram_gib": 22.5, "compile": False}
    with pytest.raises(argparse.ArgumentTypeError, match="not a boolean"):
        Setting.parse("compile=flase")
    with pytest.raises(argparse.ArgumentTypeError, match="seed=x"):
        Setting.parse("seed=x")


@pytest.mark.slow
def test_bf16_against_fp8_with_a_reference(clips, tmp_path, capsys) -> None:
    clip, reference = clips
    report_path = tmp_path / "quality.json"
    code = main([str(clip), "--reference", str(reference), "--weights", "random-small", "--device", "cpu",
                 "--out-dir", str(tmp_path / "out"), "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert report["settings"] == {"a": "precision=bf16,kv_cache_dtype=fp8", "b": "precision=fp8,kv_cache_dtype=fp8"}
    assert report["vmaf_threshold"] == 50.0
    (entry,) = report["clips"]
    for label in ("a", "b"):
        out = Path(entry[label]["output"])
        info = probe(out)
        assert (info.width, info.height, info.frames, info.codec) == (128, 96, FRAMES, "hevc")
        assert entry[label]["fps"] > 0
        assert isinstance(entry[label]["psnr"], float) and 5.0 < entry[label]["psnr"] < 60.0
        assert isinstance(entry[label]["vmaf"], float) and 0.0 <= entry[label]["vmaf"] <= 100.0
        assert isinstance(entry[label]["passes"], bool) and isinstance(entry[label]["failed"], list)
    assert entry["a"]["output"] != entry["b"]["output"]
    assert 0.0 <= entry["b_vs_a"]["vmaf"] <= 100.0 and entry["b_vs_a"]["psnr"] > 20.0  # fp8 stays close to bf16
    keeps = entry["b"]["vmaf"] >= 50.0
    assert report["b_keeps_all_above_threshold"] is keeps
    a_keeps = entry["a"]["vmaf"] >= 50.0
    expected = ("b keeps this clip above" if keeps else "b does NOT keep this clip above" if a_keeps
                else "neither a nor b reaches")  # random weights: neither
    assert entry["verdict"].startswith(expected), entry["verdict"]
    assert code == (0 if keeps else 1)
    out = capsys.readouterr().out
    assert "VMAF threshold 50" in out and "scene.mp4:" in out and "=> b " in out


@pytest.mark.slow
def test_without_a_reference_only_the_outputs_are_compared(clips, tmp_path) -> None:
    clip, _ = clips
    report_path = tmp_path / "quality.json"
    assert main([str(clip), "--scale", "2", "--weights", "random-small", "--device", "cpu",
                 "--b", "precision=fp8,fp8_layers=ffn_up+ffn_down", "--out-dir", str(tmp_path / "out"),
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    (entry,) = report["clips"]
    assert report["b_keeps_all_above_threshold"] is None and "vmaf" not in entry["b"]
    assert entry["b_vs_a"]["psnr"] > 20.0 and entry["verdict"].startswith("no reference")


def test_a_reference_of_the_wrong_size_is_refused(clips, capsys) -> None:
    clip, _ = clips
    assert main([str(clip), "--reference", str(clip), "--weights", "random-small", "--device", "cpu"]) == 2
    assert "is not 2x or 4x" in capsys.readouterr().err
