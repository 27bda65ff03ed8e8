"""fit_to_size: re-encodes in place under a byte cap, or fails cleanly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from upscaler.errors import OutputTooLargeError
from upscaler.video import FrameWriter, fit_to_size, probe
from tests import media


def _noisy_clip(path: Path, audio_from: Path | None = None) -> Path:
    """A clip that compresses badly at CRF 18 (moving pattern plus noise), 24 frames of 128x96."""
    rng = np.random.default_rng(1)
    with FrameWriter(path, 128, 96, Fraction(30000, 1001), crf=18, audio_from=audio_from) as writer:
        for i in range(24):
            noise = rng.integers(-40, 41, (96, 128, 3))
            writer.write(np.clip(media.pattern_frame(i, 128, 96).astype(int) + noise, 0, 255).astype(np.uint8))
    return path


def test_shrinks_under_the_cap_keeping_frames_rate_and_audio(tmp_path: Path) -> None:
    source = media.make_clip(tmp_path / "src.mp4", frames=24, audio=True)
    clip = _noisy_clip(tmp_path / "clip.mp4", audio_from=source)
    size = clip.stat().st_size
    cap = size // 3
    assert fit_to_size(clip, cap) == clip
    assert clip.stat().st_size <= cap
    info = probe(clip)
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (24, Fraction(30000, 1001), 128, 96, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "src.mp4"]


def test_file_already_under_the_cap_is_untouched(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "clip.mp4", frames=4)
    before = clip.read_bytes()
    fit_to_size(clip, len(before))
    assert clip.read_bytes() == before


def test_impossible_cap_raises_and_keeps_the_file(tmp_path: Path) -> None:
    clip = _noisy_clip(tmp_path / "clip.mp4")
    before = clip.read_bytes()
    with pytest.raises(OutputTooLargeError, match="could not be brought under 2000 bytes"):
        fit_to_size(clip, 2000)
    assert clip.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
