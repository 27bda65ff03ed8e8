"""probe(): properties of real files and clear errors for unusable ones."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from tests import media
from upscaler.errors import InputVideoError
from upscaler.video import probe


def test_probe_ntsc_clip_with_audio(ntsc_audio_clip: Path) -> None:
    info = probe(ntsc_audio_clip)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == Fraction(30000, 1001)
    assert info.frames == 15 and info.frames_exact
    assert info.duration_s == pytest.approx(15 * 1001 / 30000, abs=0.01)
    assert info.has_audio
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")


def test_probe_odd_size_yuv444(odd_clip: Path) -> None:
    info = probe(odd_clip)
    assert (info.width, info.height, info.frames, info.fps) == (33, 19, 9, Fraction(30))
    assert info.pix_fmt == "yuv444p" and not info.has_audio


def test_probe_estimates_frames_when_container_has_no_count(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "clip.mkv", frames=24, fps=24)
    info = probe(clip)
    assert not info.frames_exact
    assert abs(info.frames - 24) <= 2
    assert info.fps == Fraction(24)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: media.make_corrupt(p), "not a video or corrupt"),
        (lambda p: media.make_truncated(p), "not a video or corrupt"),
        (lambda p: media.make_zero_frame(p), "no video stream"),
        (lambda p: media.make_text_file(p), "not a video or corrupt"),
        (lambda p: media.make_audio_only(p), "no video stream"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "not a regular file"),
    ],
    ids=["corrupt", "truncated", "zero-frame", "text-as-mp4", "audio-only", "empty-file", "missing", "directory"],
)
def test_probe_rejects_unusable_input(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "input.mp4"
    make(path)
    with pytest.raises(InputVideoError, match=message) as caught:
        probe(path)
    assert "input.mp4" in str(caught.value)


def test_probe_refuses_frames_over_the_cap_before_decoding_them(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "clip.mkv", width=64, height=48, frames=4)
    assert probe(clip, max_frame_pixels=64 * 48).frames == 4  # at the cap
    with pytest.raises(InputVideoError, match="clip.mkv's frames are 64x48: more than the 3071 pixels"):
        probe(clip, max_frame_pixels=64 * 48 - 1)
    # The header and the first Cluster element's ID alone: no frame can be decoded, and the size the
    # header declares is refused before the decoder is asked for one.
    data = clip.read_bytes()
    header = tmp_path / "header.mkv"
    header.write_bytes(data[:data.index(b"\x1f\x43\xb6\x75") + 4])
    with pytest.raises(InputVideoError, match="no decodable video frames"):
        probe(header)
    with pytest.raises(InputVideoError, match="64x48: more than the 1000 pixels"):
        probe(header, max_frame_pixels=1000)
