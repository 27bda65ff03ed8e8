"""Per-row e4m3 quantisation (Triton interpreter): the stand-alone pass (with and without its GELU) and the
layer norm's FP8 variant against :func:`kernels.fp8_quant.quantise_rows_torch` and PyTorch's e4m3 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.fp8_quant import E4M3, E4M3_MAX, gelu_tanh_torch, quantise_rows, quantise_rows_torch
from kernels.layer_norm import add_layer_norm


def _rows(rows: int, dim: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # rows of very different magnitudes, so each row's own scale matters
    return (torch.randn(rows, dim, generator=g) * torch.logspace(-3, 3, rows)[:, None]).to(dtype)


def test_reference_rounds_to_nearest_e4m3_and_puts_the_row_maximum_on_448() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 31.6 * 2.0 / 448], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantise_rows_torch(x)
    assert q.dtype == E4M3 and scale.shape == (2, 1) and scale.dtype == torch.float32
    assert q.float()[0].abs().max() == E4M3_MAX and q.float()[0, 1] == -E4M3_MAX
    assert torch.equal(q.float()[0, 3], torch.tensor(32.0))  # 31.6 rounds up into the next binade
    assert torch.equal(q.float()[1], torch.zeros(4)) and scale[1, 0] > 0  # a zero row stays finite
    # dequantised error within half an e4m3 step (3 mantissa bits: relative 2^-4)
    err = (q.float() * scale - x)[0].abs()
    assert bool((err <= x[0].abs() * 2**-4 + 1e-7).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("rows,dim", [(7, 48), (3, 100), (5, 4500)])  # 4500: three chunks, rows past the end
def test_kernel_matches_the_reference(rows, dim, gelu, dtype) -> None:
    x = _rows(rows, dim, dtype, seed=rows * dim)
    q, scale = quantise_rows(x, gelu=gelu)
    q_ref, scale_ref = quantise_rows_torch(x, gelu=gelu)
    assert q.shape == x.shape and q.dtype == E4M3 and scale.shape == (rows, 1)
    torch.testing.assert_close(scale, scale_ref, rtol=1e-6, atol=0)
    # GELU through exp may differ in the last fp32 bit from PyTorch's: at most a few values one e4m3 step off
    mismatched = (q.float() != q_ref.float()).float().mean().item()
    assert mismatched <= (0.01 if gelu else 0.0)
    torch.testing.assert_close(q.float() * scale, q_ref.float() * scale_ref, rtol=2**-3, atol=1e-9)


def test_gelu_maxima_from_the_raw_rows_or_through_the_gelu() -> None:
    """The chunked GELU pass takes a row's largest |GELU| from its largest input where that input is >= 0.5,
    else through the GELU: rows of each kind in one program (all-negative rows, whose largest |GELU| is
    near x = -0.75; rows just below and above 0.5; large rows) give the reference's scales and values."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4500, generator=g)
    x[0] = -torch.rand(4500, generator=g) * 3  # all negative: |GELU| peaks at 0.17 inside the row
    x[1] = x[1].clamp(max=0.4999)
    x[2] = x[2].clamp(max=0.5)
    x[3] *= 100.0
    q, scale = quantise_rows(x, gelu=True)
    q_ref, scale_ref = quantise_rows_torch(x, gelu=True)
    torch.testing.assert_close(scale, scale_ref, rtol=1e-6, atol=0)
    assert (q.float() != q_ref.float()).float().mean().item() <= 0.01
    assert scale[0, 0] * 448 == pytest.approx(0.170, abs=1e-3)


def test_launch_tiles_cover_the_dit_widths() -> None:
    """The DiT's 1536-wide rows in one block, one row a program; the FFN's 8960 in five chunks of 2048, two rows a program."""
    from kernels.fp8_quant import launch_config
    assert launch_config(1536) == {"BLOCK_R": 1, "BLOCK_D": 2048, "CHUNKS": 1, "num_warps": 4}
    assert launch_config(8960) == {"BLOCK_R": 2, "BLOCK_D": 2048, "CHUNKS": 5, "num_warps": 8}
    assert launch_config(48) == {"BLOCK_R": 32, "BLOCK_D": 64, "CHUNKS": 1, "num_warps": 4}


def test_kernel_gelu_is_the_tanh_gelu() -> None:
    x = torch.linspace(-6, 6, 97)
    torch.testing.assert_close(gelu_tanh_torch(x), F.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)


def test_kernel_takes_a_strided_3d_input() -> None:
    x = _rows(12, 64, torch.float32, seed=1).view(2, 6, 64)[:, ::2]  # row stride 128, not contiguous
    q, scale = quantise_rows(x)
    q_ref, scale_ref = quantise_rows_torch(x)
    assert q.shape == (2, 3, 64) and scale.shape == (2, 3, 1)
    assert torch.equal(q.float(), q_ref.float()) and torch.equal(scale, scale_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mode", ["norm", "gated-add", "add-affine"])
def test_layer_norm_fp8_variant_quantises_what_the_plain_variant_writes(mode, dtype) -> None:
    g = torch.Generator().manual_seed(7)
    rows, dim = 5, 96
    x = (torch.randn(1, rows, dim, generator=g) * 3).to(dtype)
    update = torch.randn(1, rows, dim, generator=g).to(dtype)
    gate, scale, shift = ((torch.randn(dim, generator=g) * 0.5 + offset).to(dtype) for offset in (0.0, 1.0, 0.0))
    kwargs = dict(update=update if mode != "norm" else None, gate=gate if mode == "gated-add" else None,
                  affine=mode.endswith("affine"))
    x_plain, y_plain = add_layer_norm(x, scale, shift, 1e-6, **kwargs)
    x_fp8, (q, row_scale) = add_layer_norm(x, scale, shift, 1e-6, fp8=True, **kwargs)
    assert torch.equal(x_fp8, x_plain)
    assert q.dtype == E4M3 and q.shape == x.shape and row_scale.shape == (1, rows, 1)
    q_ref, scale_ref = quantise_rows_torch(y_plain)
    torch.testing.assert_close(row_scale, scale_ref, rtol=1e-6, atol=0)
    assert torch.equal(q.float(), q_ref.float())
