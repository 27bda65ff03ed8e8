"""FrameWriter: exact frame count and rate, audio carried over, atomic output, encoder choice."""

from __future__ import annotations

import os
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests import media
from tests.video.conftest import decoded_frames, psnr
from upscaler.errors import EncodeError
from upscaler.video import FrameReader, FrameWriter, probe
from upscaler.video.config import video_config
from upscaler.video.encoders import choose_encoder, nvenc_opens


def _pattern(frames: int, width: int, height: int) -> np.ndarray:
    return np.stack([media.pattern_frame(i, width, height) for i in range(frames)])


def _streams(path: Path) -> dict[str, dict]:
    with av.open(str(path)) as container:
        return {
            s.type: {
                "codec": s.codec_context.name,
                "frames": s.frames,
                "seconds": float(s.duration * s.time_base) if s.duration else None,
                "tag": s.codec_tag,
            }
            for s in container.streams
        }


@pytest.mark.parametrize("fps", [Fraction(30), Fraction(30000, 1001)], ids=["30", "29.97"])
def test_round_trip_count_size_rate_content(tmp_path: Path, fps: Fraction) -> None:
    frames = _pattern(17, 96, 64)
    out = tmp_path / "out.mp4"
    with FrameWriter(out, 96, 64, fps) as writer:
        writer.write(frames[:8])  # a numpy batch
        writer.write(torch.from_numpy(frames[8:16]))  # a tensor batch
        writer.write(frames[16])  # one frame
    info = probe(out)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 17, fps)
    assert info.duration_s == pytest.approx(float(17 / fps), abs=1e-3)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    decoded = decoded_frames(out)
    assert len(decoded) == 17
    assert min(psnr(d, f) for d, f in zip(decoded, frames)) > 30  # 4:2:0 chroma loss on a tiny, saturated frame
    assert [max(range(17), key=lambda j: psnr(d, frames[j])) for d in decoded] == list(range(17))  # in order
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_faststart_puts_the_index_first(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with FrameWriter(out, 64, 48, 30) as writer:
        writer.write(_pattern(5, 64, 48))
    data = out.read_bytes()
    assert 0 < data.index(b"moov") < data.index(b"mdat")


def test_odd_size_is_encoded_as_h264_444(tmp_path: Path, odd_clip: Path) -> None:
    out = tmp_path / "odd.mp4"
    with FrameWriter(out, 33, 19, 30, codec="hevc") as writer:
        for frame in FrameReader(odd_clip):
            writer.write(frame)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (33, 19, 9)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv444p")


def test_hevc_output(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with FrameWriter(out, 64, 48, 25, codec="hevc") as writer:
        writer.write(_pattern(6, 64, 48))
    info = probe(out)
    assert (info.codec, info.frames, info.fps) == ("hevc", 6, Fraction(25))
    assert _streams(out)["video"]["tag"] == "hvc1"


def _thread_nice(thread: str) -> int:
    """The nice value of thread ``thread`` of this process (field 19 of its ``stat``, after the name)."""
    stat = Path(f"/proc/self/task/{thread}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_encoder_and_its_codec_threads_run_below_the_process(tmp_path: Path) -> None:
    """The encoder thread lowers its priority before the codec opens, so x265's worker pool inherits it; the
    caller's thread keeps the process's."""
    before = set(os.listdir("/proc/self/task"))
    process_nice = os.getpriority(os.PRIO_PROCESS, 0)
    with FrameWriter(tmp_path / "out.mp4", 128, 96, 25, codec="hevc", threads=4) as writer:
        writer.write(_pattern(8, 128, 96))
        deadline = time.monotonic() + 10
        while writer.encode_seconds == 0 and time.monotonic() < deadline:  # the codec is open once a frame is encoded
            time.sleep(0.01)
        started = set(os.listdir("/proc/self/task")) - before
        nice = {thread: _thread_nice(thread) for thread in started if os.path.exists(f"/proc/self/task/{thread}")}
    assert len(nice) >= 2  # the encoder thread and the codec's workers (x265 lowers a few of them further)
    assert min(nice.values()) == process_nice + video_config().writer.nice
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == process_nice


def test_aac_audio_is_copied(tmp_path: Path, ntsc_audio_clip: Path) -> None:
    info = probe(ntsc_audio_clip)
    out = tmp_path / "out.mp4"
    with FrameWriter(out, 128, 96, info.fps, audio_from=ntsc_audio_clip) as writer:
        for frame in FrameReader(ntsc_audio_clip):
            writer.write(np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1))
    source, result = _streams(ntsc_audio_clip), _streams(out)
    assert result["audio"]["codec"] == "aac"
    assert result["audio"]["frames"] == source["audio"]["frames"]  # packet copy: same packets
    assert result["audio"]["seconds"] == pytest.approx(source["audio"]["seconds"], abs=0.01)
    assert result["video"]["frames"] == 15 and probe(out).fps == Fraction(30000, 1001)


def test_audio_mp4_cannot_hold_is_reencoded_to_aac(tmp_path: Path) -> None:
    src = media.make_clip(tmp_path / "pcm.mov", frames=12, audio=True, audio_codec="pcm_s16le")
    out = tmp_path / "out.mp4"
    with FrameWriter(out, 64, 48, 30, audio_from=src) as writer:
        for frame in FrameReader(src):
            writer.write(frame)
    streams = _streams(out)
    assert streams["audio"]["codec"] == "aac"
    assert streams["audio"]["seconds"] == pytest.approx(12 / 30, abs=0.1)  # AAC pads to whole 1024-sample frames


def test_source_without_audio_gives_video_only(tmp_path: Path, odd_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    with FrameWriter(out, 64, 48, 30, audio_from=odd_clip) as writer:
        writer.write(_pattern(3, 64, 48))
    assert set(_streams(out)) == {"video"}


def test_exception_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with FrameWriter(out, 64, 48, 30) as writer:
            writer.write(_pattern(4, 64, 48))
            raise KeyError("stop")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_an_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError, match="frame shape"):
        with FrameWriter(out, 64, 48, 30) as writer:
            writer.write(_pattern(2, 64, 48))
            writer.write(_pattern(1, 32, 32))
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_abort_and_empty_output(tmp_path: Path) -> None:
    writer = FrameWriter(tmp_path / "a.mp4", 64, 48, 30)
    writer.write(_pattern(2, 64, 48))
    writer.abort()
    with pytest.raises(EncodeError, match="no frames"):
        with FrameWriter(tmp_path / "b.mp4", 64, 48, 30):
            pass
    assert list(tmp_path.iterdir()) == []


def test_rejects_non_uint8_frames(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        with FrameWriter(tmp_path / "out.mp4", 64, 48, 30) as writer:
            writer.write(np.zeros((48, 64, 3), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_encoder_choice() -> None:
    assert choose_encoder("h264", 64, 48, "yuv420p", prefer_nvenc=False) == "libx264"
    assert choose_encoder("hevc", 64, 48, "yuv420p", prefer_nvenc=False) == "libx265"
    expected = "h264_nvenc" if nvenc_opens("h264_nvenc", 640, 480, "yuv420p") else "libx264"
    assert choose_encoder("h264", 640, 480, "yuv420p", prefer_nvenc=True) == expected
    if not torch.cuda.is_available():
        assert expected == "libx264"  # listed by FFmpeg, but the trial open fails without a GPU
    assert not nvenc_opens("no_such_encoder", 64, 48, "yuv420p")
    with pytest.raises(ValueError, match="unsupported output codec"):
        choose_encoder("vp9", 64, 48, "yuv420p", prefer_nvenc=False)
