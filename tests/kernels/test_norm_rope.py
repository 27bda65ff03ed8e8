"""The fused q/k RMSNorm + RoPE kernel (Triton interpreter) against the PyTorch chain of the DiT."""

from __future__ import annotations

import pytest
import torch

from kernels.norm_rope import rms_norm_rope, supports
from upscaler.models.attention import _norm_rope_torch
from upscaler.models.rope import Rope3D


def _inputs(b: int, length: int, heads: int, head_dim: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, length, heads * head_dim, generator=g) * 3).to(dtype)
    weight = (1 + 0.2 * torch.randn(heads * head_dim, generator=g)).to(dtype)
    positions = torch.randint(0, 30, (length, 3), generator=g)  # (time, row, column) of each token
    cos, sin = Rope3D(head_dim).tables(positions, time_offset=seed)
    return x, weight, cos, sin


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("b,length,heads,head_dim", [(1, 5, 12, 32), (2, 3, 3, 128), (1, 7, 5, 8)])
def test_kernel_matches_the_pytorch_chain(b, length, heads, head_dim, dtype, tol) -> None:
    """Head counts that are not a power of two (padded in the kernel), odd row counts, batch > 1."""
    x, weight, cos, sin = _inputs(b, length, heads, head_dim, dtype, seed=heads + length)
    expected = _norm_rope_torch(x, weight, 1e-6, heads, cos, sin)
    got = rms_norm_rope(x, weight, 1e-6, heads, cos, sin)
    assert got.shape == expected.shape == (b, heads, length, head_dim) and got.dtype == dtype
    assert got.stride() == expected.stride()
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def test_kernel_rejects_what_it_cannot_run() -> None:
    x, weight, cos, sin = _inputs(1, 4, 3, 32, torch.float32, seed=0)
    assert supports(x, 3, cos)
    assert not supports(x.transpose(0, 1), 3, cos)  # rows not evenly strided
    assert not supports(x, 3, cos.half()) and not supports(x[..., :-8], 3, cos)
    with pytest.raises(ValueError, match="cover 3 tokens"):
        rms_norm_rope(x, weight, 1e-6, 3, cos[:3], sin[:3])
    with pytest.raises(ValueError, match="cannot take"):
        rms_norm_rope(x, weight, 1e-6, 3, cos, sin[..., :8])
