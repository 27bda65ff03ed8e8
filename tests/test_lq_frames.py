"""The LQ window pads past the clip end by replication and releases consumed frames."""

import pytest
import torch

from upscaler.errors import InputVideoError
from upscaler.lq_frames import LQFrames


def _batches(total: int, size: int):
    for start in range(0, total, size):
        n = min(size, total - start)
        yield torch.arange(start, start + n, dtype=torch.float32).view(1, 1, n, 1, 1).expand(1, 3, n, 2, 2)


def _ids(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[0, 0, :, 0, 0]]


def test_get_pads_with_last_frame_and_reports_length() -> None:
    lq = LQFrames(_batches(10, 3))
    assert _ids(lq.get(0, 4)) == [0, 1, 2, 3]
    assert lq.clip_frames is None
    assert _ids(lq.get(8, 13)) == [8, 9, 9, 9, 9]
    assert lq.clip_frames == 10
    assert _ids(lq.get(12, 14)) == [9, 9]


def test_release_bounds_memory_and_forbids_going_back() -> None:
    lq = LQFrames(_batches(40, 8))
    lq.get(0, 25)
    lq.release_before(21)
    assert _ids(lq.get(21, 25)) == [21, 22, 23, 24]
    with pytest.raises(IndexError):
        lq.get(20, 22)


def test_empty_source_is_an_input_error() -> None:
    with pytest.raises(InputVideoError):
        LQFrames(iter(())).get(0, 1)
