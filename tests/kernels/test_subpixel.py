"""The sub-pixel interleave kernel (Triton interpreter) against its PyTorch reference and a plain loop."""

from __future__ import annotations

import pytest
import torch

from kernels.subpixel import interleave_phases, interleave_phases_torch, interleave_phases_triton


def loop_interleave(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Output pixel (2i + a, 2j + b) = phase 2a + b of y at (i + a, j + b), by direct indexing."""
    n, c = y.shape[0], y.shape[1] // 4
    out = torch.empty(n, c, 2 * height, 2 * width, dtype=y.dtype)
    for a in range(2):
        for b in range(2):
            phase = 2 * a + b
            out[:, :, a::2, b::2] = y[:, phase * c:(phase + 1) * c, a:a + height, b:b + width]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels,height,width", [(8, 3, 5), (24, 4, 3), (1, 2, 2)])
@pytest.mark.parametrize("relu", [False, True])
def test_triton_interleave_matches_references(dtype, channels, height, width, relu) -> None:
    g = torch.Generator().manual_seed(channels * 100 + height)
    y = torch.randn(2, 4 * channels, height + 1, width + 1, generator=g).to(dtype)
    y = y.contiguous(memory_format=torch.channels_last)
    expected = loop_interleave(y, height, width)
    if relu:
        expected = expected.relu()
    got = interleave_phases_triton(y, height, width, relu=relu)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, expected)
    assert torch.equal(interleave_phases_torch(y, height, width, relu=relu), expected)
    assert torch.equal(interleave_phases_torch(y.contiguous(), height, width, relu=relu), expected)


@pytest.mark.parametrize("path", [interleave_phases_triton, interleave_phases_torch], ids=["triton", "torch"])
def test_interleave_writes_into_strided_frames(path) -> None:
    """``out`` as the frames of a contiguous (C, T, H, W) video viewed as (T, C, H, W): NCHW planes with
    a frame stride of H * W."""
    g = torch.Generator().manual_seed(5)
    y = torch.randn(3, 4 * 6, 4, 5, generator=g).contiguous(memory_format=torch.channels_last)
    video = torch.full((6, 3, 6, 8), float("nan"))
    got = path(y, 3, 4, relu=True, out=video.transpose(0, 1))
    assert got.data_ptr() == video.data_ptr()
    assert torch.equal(video.transpose(0, 1), loop_interleave(y, 3, 4).relu())


def test_interleave_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="does not match"):
        interleave_phases(torch.zeros(1, 8, 4, 4), 4, 3)
    with pytest.raises(ValueError, match="does not match"):
        interleave_phases(torch.zeros(1, 6, 4, 4), 3, 3)
    with pytest.raises(ValueError, match="channels-last"):
        interleave_phases_triton(torch.zeros(1, 8, 4, 4), 3, 3)
    with pytest.raises(ValueError, match="out must be"):
        interleave_phases(torch.zeros(1, 8, 4, 4), 3, 3, out=torch.zeros(1, 2, 6, 5))
