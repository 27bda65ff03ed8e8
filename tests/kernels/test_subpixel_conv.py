"""The sub-pixel conv kernel (Triton interpreter) against the 3x3 conv of the upsampled image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.subpixel_conv import SubpixelTile, pack_phase_taps, subpixel_conv, supported
from upscaler.models.upsampled_conv import phase_weight

SMALL_TILE = SubpixelTile(rows=2, block_j=8, block_n=16, block_k=16, num_warps=4, num_stages=1)


def _case(frames: int, c: int, n: int, h: int, w: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(n, c, 3, 3, generator=g) / (3 * c**0.5)).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("frames,c,n,h,w", [(2, 32, 16, 3, 11), (1, 16, 24, 1, 1), (3, 16, 16, 4, 8)])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_the_conv_of_the_upsampled_image(frames, c, n, h, w, dtype, relu) -> None:
    """Every border, tiles across rows and columns, output channels past one tile, two reduction chunks."""
    x, weight, bias = _case(frames, c, n, h, w, dtype, seed=c + n + h)
    expected = F.conv2d(F.interpolate(x.double(), scale_factor=2), weight.double(), bias.double(), padding=1)
    if relu:
        expected = expected.relu()
    got = subpixel_conv(x, pack_phase_taps(phase_weight(weight)), bias, relu=relu, tile=SMALL_TILE)
    assert got.shape == (frames, n, 2 * h, 2 * w) and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_writes_into_the_frames_of_a_video_without_bias() -> None:
    x, weight, _ = _case(2, 16, 16, 3, 5, torch.float32, seed=0)
    video = torch.full((16, 2, 6, 12), 5.0)
    subpixel_conv(x, pack_phase_taps(phase_weight(weight)), None, out=video[..., :10].transpose(0, 1), tile=SMALL_TILE)
    expected = F.conv2d(F.interpolate(x, scale_factor=2), weight, None, padding=1)
    torch.testing.assert_close(video[..., :10].transpose(0, 1), expected, rtol=1e-5, atol=1e-5)
    assert bool((video[..., 10:] == 5.0).all())


def test_refuses_what_it_cannot_run() -> None:
    x, weight, bias = _case(1, 16, 16, 2, 2, torch.float32, seed=0)
    packed = pack_phase_taps(phase_weight(weight))
    assert supported(x, packed, tile=SMALL_TILE) and not supported(x.contiguous(), packed, tile=SMALL_TILE)
    with pytest.raises(ValueError, match="channels-last"):
        subpixel_conv(x.contiguous(), packed, bias, tile=SMALL_TILE)
    with pytest.raises(ValueError, match="phase-major"):
        pack_phase_taps(weight)
    with pytest.raises(ValueError, match="bias must be"):
        subpixel_conv(x, packed, bias[:3], tile=SMALL_TILE)


def test_frames_past_32_bit_offsets_are_not_supported() -> None:
    """An 8K output frame of 128 channels spans more than 2^31 elements: the PyTorch path serves it."""
    packed = torch.zeros(4, 4, 128, 128, device="meta")

    def channels_last_frame(h: int, w: int) -> torch.Tensor:
        return torch.empty_strided((1, 128, h, w), (h * w * 128, 1, w * 128, 128), device="meta")

    assert supported(channels_last_frame(1088, 1920), packed)  # 4K out: 2176 x 3840 x 128 < 2^31
    assert not supported(channels_last_frame(2176, 3840), packed)  # 8K out
