"""FrameReader: streaming RGB frames, background decode, errors surfacing in the consumer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import media
from tests.video.conftest import decoded_frames, psnr
from upscaler.errors import InputVideoError
from upscaler.video import FrameReader
from upscaler.video.channel import Channel


def test_reads_every_frame_as_rgb(ntsc_audio_clip: Path) -> None:
    frames = list(FrameReader(ntsc_audio_clip, prefetch=4))
    assert len(frames) == 15
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    for got, expected in zip(frames, decoded_frames(ntsc_audio_clip)):
        np.testing.assert_array_equal(got, expected)
    # the decoded video is the generated pattern, up to compression loss
    assert psnr(frames[7], media.pattern_frame(7, 64, 48)) > 30


def test_odd_size_non_yuv420_input(odd_clip: Path) -> None:
    frames = list(FrameReader(odd_clip, prefetch=2, output="torch"))
    assert len(frames) == 9
    assert all(isinstance(f, torch.Tensor) and f.shape == (19, 33, 3) and f.dtype == torch.uint8 for f in frames)
    # 33x19 at ultrafast/CRF 23 loses more than larger frames; broken strides would give ~10 dB
    assert psnr(frames[3].numpy(), media.pattern_frame(3, 33, 19)) > 25


def test_early_stop_ends_the_decode_thread(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "long.mp4", frames=40)
    reader = FrameReader(clip, prefetch=2)
    taken = []
    for frame in reader:
        taken.append(frame)
        if len(taken) == 3:
            break
    assert len(taken) == 3
    assert reader._thread is not None and not reader._thread.is_alive()
    assert not any(t.name.startswith("decode-long") for t in threading.enumerate())


def test_a_reader_iterates_once(odd_clip: Path) -> None:
    reader = FrameReader(odd_clip)
    assert len(list(reader)) == 9
    with pytest.raises(RuntimeError, match="only once"):
        list(reader)


@pytest.mark.parametrize(
    "make",
    [media.make_corrupt, media.make_truncated, media.make_zero_frame, media.make_text_file, media.make_audio_only],
    ids=["corrupt", "truncated", "zero-frame", "text-as-mp4", "audio-only"],
)
def test_bad_input_raises_in_the_consumer(tmp_path: Path, make) -> None:
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(InputVideoError, match="bad.mp4"):
        list(FrameReader(path))


def test_size_change_mid_stream_is_an_input_error(tmp_path: Path) -> None:
    reader = FrameReader(media.make_size_change(tmp_path / "resized.h264"))
    frames = []
    with pytest.raises(InputVideoError, match=r"resized.h264: frame 5 is 80x48, the video started at 64x48"):
        frames.extend(reader)
    assert len(frames) == 5


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputVideoError, match="not found"):
        next(iter(FrameReader(tmp_path / "nope.mp4")))


def test_a_frame_decoded_ahead_costs_the_consumer_no_wait(odd_clip: Path) -> None:
    """``wait_s`` counts the time the consumer blocked on an empty queue, not the time it spent itself."""
    reader = FrameReader(odd_clip, prefetch=1)
    frames = iter(reader)
    next(frames)
    waited_before = reader.wait_s
    time.sleep(0.3)  # the decode thread refills the one-frame queue meanwhile: no wait for the next frame
    next(frames)
    assert reader.wait_s - waited_before < 0.1
    reader.close()


def test_a_channel_counts_the_consumer_wait() -> None:
    channel: Channel[int] = Channel(1)
    threading.Timer(0.25, lambda: channel.put(7)).start()
    assert channel.get() == 7
    assert 0.2 <= channel.wait_s < 2.0
    channel.put(8)
    waited = channel.wait_s
    assert channel.get() == 8 and channel.wait_s == waited  # a queued item costs no wait
