"""Fixtures for the video I/O tests: clips generated once per module with tests/media.py."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests import media


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def ntsc_audio_clip(clip_dir: Path) -> Path:
    """64x48, 15 frames at 29.97 fps (30000/1001) with an AAC track."""
    return media.make_clip(clip_dir / "ntsc_audio.mp4", frames=15, fps=Fraction(30000, 1001), audio=True)


@pytest.fixture(scope="module")
def odd_clip(clip_dir: Path) -> Path:
    """33x19 yuv444p, 9 frames at 30 fps."""
    return media.make_clip(clip_dir / "odd.mp4", width=33, height=19, frames=9)


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` decoded directly with PyAV (independent of FrameReader)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
