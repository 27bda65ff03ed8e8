"""The FP8 implicit-GEMM 3x3 conv (Triton interpreter) against a float64 conv over the same e4m3 values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.fp8_conv import ConvTile, conv3x3_fp8, supported

E4M3 = torch.float8_e4m3fn
SMALL = ConvTile(block_m=32, block_n=32, block_k=32, group_m=2, warps=4, stages=2)


def _operands(frames: int, c: int, h: int, w: int, n: int, seed: int):
    """Padded channels-last e4m3 input, its ``(N, 9C)`` tap-major weight, and the float64 conv weight."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(frames, h + 2, w + 2, c, generator=g) * 40).to(E4M3).permute(0, 3, 1, 2)
    weight = (torch.randn(n, 3, 3, c, generator=g) * 40).to(E4M3)
    return x, weight.reshape(n, 9 * c), weight.double().permute(0, 3, 1, 2)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("frames,c,h,w,n,tile", [
    (2, 64, 3, 5, 48, SMALL),    # several frames, output channels not a multiple of the tile
    (1, 32, 7, 2, 32, SMALL),    # row tiles spanning many padded rows, the two unstored columns per row
    (1, 128, 2, 3, 40, ConvTile()),  # the default tile: one row tile, output channels below its width
])
def test_kernel_matches_a_float64_conv(frames, c, h, w, n, tile, with_bias) -> None:
    x, weight, reference_weight = _operands(frames, c, h, w, n, seed=frames + c + n)
    g = torch.Generator().manual_seed(7)
    scale = torch.rand(n, generator=g) + 0.5
    bias = torch.randn(n, generator=g) * 100 if with_bias else None
    got = conv3x3_fp8(x, weight, scale, bias, out_dtype=torch.float32, tile=tile)
    want = F.conv2d(x.double(), reference_weight) * scale.double().view(1, -1, 1, 1)
    if with_bias:
        want = want + bias.double().view(1, -1, 1, 1)
    assert got.shape == (frames, n, h, w) and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_bf16_output_is_the_fp32_result_rounded() -> None:
    """Within one bf16 step (the interpreter rounds fp32 -> bf16 toward zero, the GPU to nearest)."""
    x, weight, _ = _operands(1, 32, 2, 2, 32, seed=3)
    scale = torch.full((32,), 1e-3)
    exact = conv3x3_fp8(x, weight, scale, out_dtype=torch.float32, tile=SMALL)
    got = conv3x3_fp8(x, weight, scale, tile=SMALL)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), exact, rtol=2**-7, atol=0)


def test_refuses_what_it_cannot_run() -> None:
    x, weight, _ = _operands(1, 32, 2, 2, 32, seed=4)
    assert supported(x, weight, SMALL)
    assert not supported(x, weight)  # 32 channels: not a multiple of the default tile's 128
    assert not supported(x.contiguous(), weight, SMALL)  # channels-first
    assert not supported(x.float(), weight, SMALL)
    assert not supported(x, weight[:, :-32], SMALL)
    with pytest.raises(ValueError, match="channels-last e4m3"):
        conv3x3_fp8(x.contiguous(), weight, torch.ones(32), tile=SMALL)
