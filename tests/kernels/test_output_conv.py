"""The decoder's output conv kernel (Triton interpreter) against a float64 conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.output_conv import OutputConvTile, output_conv, pack_output_taps, supported

# Small tiles: several programs across rows and columns, a halo past both image borders.
SMALL = OutputConvTile(rows=3, block_w=8, num_warps=4, num_stages=1)
TILES = [SMALL, OutputConvTile(rows=2, block_w=16, num_warps=4, num_stages=1)]


def _case(frames: int, c: int, outputs: int, h: int, w: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(outputs, c, 3, 3, generator=g) / (3 * c**0.5)).to(dtype)
    bias = torch.randn(outputs, generator=g).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("tile", TILES, ids=["3x6", "2x14"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("frames,c,outputs,h,w", [(2, 32, 3, 7, 19), (1, 16, 1, 1, 1), (1, 16, 4, 5, 6)])
def test_matches_the_conv(frames, c, outputs, h, w, dtype, tile) -> None:
    """Every border, rows and columns past one program, rows not a multiple of the tile's, 1-4 outputs."""
    x, weight, bias = _case(frames, c, outputs, h, w, dtype, seed=c + h + w)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    got = output_conv(x, pack_output_taps(weight), bias, outputs, tile=tile)
    assert got.shape == (frames, outputs, h, w) and got.dtype == dtype and got.is_contiguous()
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_writes_into_the_frames_of_a_video_without_bias() -> None:
    """``(3, T, H, W)`` planes, as the decoder's output is laid out, from a cropped channels-last input."""
    x, weight, _ = _case(2, 16, 3, 6, 12, torch.float32, seed=1)
    x = x[..., 1:11]
    video = torch.full((3, 2, 6, 12), 5.0)
    output_conv(x, pack_output_taps(weight), None, 3, out=video[..., :10].transpose(0, 1), tile=SMALL)
    expected = F.conv2d(x, weight, None, padding=1)
    torch.testing.assert_close(video[..., :10].transpose(0, 1), expected, rtol=1e-5, atol=1e-5)
    assert bool((video[..., 10:] == 5.0).all())


def test_packs_each_kernel_column_with_its_rows_side_by_side() -> None:
    weight = torch.arange(2 * 1 * 9, dtype=torch.float32).reshape(2, 1, 3, 3)
    packed = pack_output_taps(weight)
    assert packed.shape == (3, 1, 16)
    for dx in range(3):
        for dy in range(3):
            assert packed[dx, 0, 4 * dy: 4 * dy + 2].tolist() == weight[:, 0, dy, dx].tolist()
            assert packed[dx, 0, 4 * dy + 2: 4 * dy + 4].abs().sum() == 0
    assert packed[:, :, 12:].abs().sum() == 0


def test_refuses_what_it_cannot_run() -> None:
    x, weight, bias = _case(1, 16, 3, 2, 2, torch.float32, seed=0)
    packed = pack_output_taps(weight)
    assert supported(x) and not supported(x.contiguous()) and not supported(x[:, :12])
    with pytest.raises(ValueError, match="channels-last"):
        output_conv(x.contiguous(), packed, bias, 3)
    with pytest.raises(ValueError, match="at most 4"):
        pack_output_taps(torch.zeros(5, 16, 3, 3))
    with pytest.raises(ValueError, match="with a bias"):
        output_conv(x, packed, bias[:2], 3)
    with pytest.raises(ValueError, match="packed taps"):
        output_conv(x, packed.half(), bias, 3)


def test_frames_past_32_bit_offsets_are_not_supported() -> None:
    """A 4K frame of 128 channels is within 2^31 elements, an 8K frame is not (cuDNN serves it)."""

    def channels_last_frame(h: int, w: int) -> torch.Tensor:
        return torch.empty_strided((1, 128, h, w), (h * w * 128, 1, w * 128, 128), device="meta")

    assert supported(channels_last_frame(2176, 3840))
    assert not supported(channels_last_frame(4352, 7680))
