"""The frames-to-pixels kernel (Triton interpreter) against PyTorch's clamp, scale, round and permute."""

from __future__ import annotations

import pytest
import torch

from kernels.pixels import BLOCK_W, pixels, pixels_torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("frames,height,width", [(2, 3, BLOCK_W + 7), (1, 1, 1), (3, 4, 5)])
def test_kernel_matches_pytorch_bit_for_bit(frames, height, width, dtype) -> None:
    """Values past [-1, 1], both ends exactly, and width across a program's edge."""
    g = torch.Generator().manual_seed(frames * width)
    planes = (torch.randn(3, frames, height, width, generator=g) * 0.8).to(dtype)
    planes[0, 0, 0, 0], planes[1, 0, 0, 0], planes[2, 0, 0, 0] = -1.0, 1.0, 3.0
    got = pixels(planes)
    assert got.shape == (frames, height, width, 3) and got.dtype == torch.uint8 and got.is_contiguous()
    assert torch.equal(got, pixels_torch(planes))
    assert got[0, 0, 0].tolist() == [0, 255, 255]


def test_halfway_values_round_to_even() -> None:
    """``(x + 1) * 127.5`` landing exactly on k + 0.5 rounds to the even neighbour, as ``torch.round``."""
    halves = torch.arange(0, 255, dtype=torch.float32) + 0.5  # every tie in range
    x = (halves / 127.5 - 1.0)
    exact = ((x + 1.0) * 127.5) == halves  # the ties fp32 represents exactly after the round trip
    planes = x[exact].reshape(1, 1, 1, -1).expand(3, 1, 1, -1)
    got = pixels(planes)[0, 0, :, 0]
    assert int(exact.sum()) > 100
    assert torch.equal(got, pixels_torch(planes)[0, 0, :, 0])
    assert bool((got % 2 == 0).all())


def test_strided_crop_of_padded_frames() -> None:
    """A crop of padded planes (the decoder's output, cut to the clip's size) needs no copy first."""
    padded = torch.rand(1, 3, 2, 12, 20) * 2 - 1
    crop = padded[0, :, :, :10, :17]
    assert not crop.is_contiguous()
    assert torch.equal(pixels(crop), pixels_torch(crop))


def test_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match="colour planes"):
        pixels(torch.zeros(4, 1, 2, 2))
