"""The FFN up projection's FP8 product with the GELU and 1x128 block quantisation in its epilogue (Triton
interpreter), against a float64 reference over the same e4m3 operands."""

from __future__ import annotations

import pytest
import torch

from kernels.fp8_ffn_up import GemmTile, supported, up_gelu_quantise, up_gelu_quantise_torch
from kernels.fp8_quant import BLOCK, E4M3, E4M3_MAX, dequantise_blocks_torch, gelu_tanh_torch, quantise_rows_torch

SMALL = GemmTile(block_m=32, block_k=32, group_m=2, warps=4, stages=2)
PERSISTENT = GemmTile(block_m=32, block_k=32, group_m=2, warps=4, stages=2, programs_per_sm=1)  # 4 programs here


def _operands(rows: int, k: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a, a_scale = quantise_rows_torch(torch.randn(rows, k, generator=g))
    w, w_scale = quantise_rows_torch(torch.randn(n, k, generator=g) * k ** -0.5)
    bias = (torch.randn(n, generator=g) * 0.5).to(torch.bfloat16)
    return a, a_scale, w, w_scale.reshape(1, -1), bias


@pytest.mark.parametrize("rows,k,n,tile", [
    (70, 64, 256, SMALL),           # a row tail, two column blocks, several reduction steps
    (70, 64, 384, PERSISTENT),      # 9 tiles over 4 programs: each loops over two or three
    (5, 128, 128, GemmTile()),      # the default tile: one row tile, one block, one reduction step
])
def test_kernel_matches_a_float64_reference(rows, k, n, tile) -> None:
    a, a_scale, w, w_scale, bias = _operands(rows, k, n, seed=rows + k + n)
    q, scale = up_gelu_quantise(a, a_scale, w, w_scale, bias, tile=tile)
    assert q.dtype == E4M3 and q.shape == (rows, n)
    assert scale.shape == (rows, n // BLOCK) and scale.stride() == (1, rows)  # what cuBLAS's 1x128 scaling reads
    h = (a.double() @ w.double().t()) * a_scale.double() * w_scale.double() + bias.double()
    want = gelu_tanh_torch(h).double()
    block_max = want.abs().unflatten(1, (-1, BLOCK)).amax(-1)
    torch.testing.assert_close(scale.double(), block_max / E4M3_MAX, rtol=1e-5, atol=0)
    # each value within half an e4m3 step of its own magnitude, or of the block's smallest subnormal step
    error = (dequantise_blocks_torch(q, scale).double() - want).abs()
    bound = want.abs() * 2.0 ** -4 + (block_max / E4M3_MAX).repeat_interleave(BLOCK, 1) * 2.0 ** -10
    assert bool((error <= bound * 1.001).all()), float((error / bound).max())
    # every block's largest magnitude lands on e4m3's largest value
    assert bool((q.float().abs().unflatten(1, (-1, BLOCK)).amax(-1) == E4M3_MAX).all())


def test_reference_quantises_each_block_as_a_row() -> None:
    a, a_scale, w, w_scale, bias = _operands(9, 64, 384, seed=3)
    q, scale = up_gelu_quantise_torch(a, a_scale, w, w_scale, bias)
    h = (a.float() @ w.float().t()) * a_scale * w_scale + bias.float()
    for block in range(384 // BLOCK):
        columns = slice(block * BLOCK, (block + 1) * BLOCK)
        want_q, want_scale = quantise_rows_torch(gelu_tanh_torch(h[:, columns]))
        assert torch.equal(q[:, columns].float(), want_q.float())
        assert torch.equal(scale[:, block:block + 1], want_scale)


def test_kernel_equals_the_reference_but_for_summation_order() -> None:
    a, a_scale, w, w_scale, bias = _operands(33, 96, 256, seed=5)
    q, scale = up_gelu_quantise(a, a_scale, w, w_scale, bias, tile=SMALL)
    want_q, want_scale = up_gelu_quantise_torch(a, a_scale, w, w_scale, bias)
    torch.testing.assert_close(scale, want_scale, rtol=1e-5, atol=0)
    differs = (q.float() != want_q.float()).float().mean().item()
    assert differs < 0.01, differs  # an fp32 sum in another order crosses an e4m3 rounding boundary rarely


def test_refuses_what_it_cannot_run() -> None:
    a, a_scale, w, w_scale, bias = _operands(4, 64, 128, seed=6)
    assert supported(a, w, SMALL)
    assert not supported(a, w)                       # K = 64: not a multiple of the default tile's 128
    assert not supported(a, w[:100], SMALL)          # N not a multiple of 128
    assert not supported(a.float(), w, SMALL)
    assert not supported(a.t(), w, SMALL)
    with pytest.raises(ValueError, match="N of 128"):
        up_gelu_quantise(a, a_scale, w[:100], w_scale[:, :100], bias[:100], tile=SMALL)
