"""The LQ projection's fused conv epilogue (Triton interpreter) against the eager PyTorch chain."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.channel_norm import bias_norm_silu_, supports
from upscaler.models.lq_proj import ChannelRMSNorm


def eager(x: torch.Tensor, bias: torch.Tensor | None, norm: ChannelRMSNorm) -> torch.Tensor:
    """What ``_LQProj._layer`` computes off CUDA, on a 4D conv output (frames as the batch)."""
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1)
    return F.silu(norm(x.unsqueeze(2)).squeeze(2))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 4e-3)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("n,c,h,w", [(2, 48, 3, 5), (1, 100, 2, 3), (3, 16, 1, 1)])
@torch.no_grad()
def test_kernel_matches_the_eager_chain(n, c, h, w, with_bias, dtype, tol) -> None:
    """Channel counts that are and are not powers of two, a single frame, 1x1 frames; in place."""
    g = torch.Generator().manual_seed(c + n)
    norm = ChannelRMSNorm(c)
    norm.gamma.copy_(1 + 0.3 * torch.randn(c, 1, 1, 1, generator=g))
    x = (3 * torch.randn(n, h, w, c, generator=g)).permute(0, 3, 1, 2).to(dtype)  # channels-last
    bias = torch.randn(c, generator=g).to(dtype) if with_bias else None
    expected = eager(x.float(), None if bias is None else bias.float(), norm)
    got = bias_norm_silu_(x, bias, norm.gamma.to(dtype), norm.scale)
    assert got.data_ptr() == x.data_ptr()
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)


def test_zero_rows_stay_finite() -> None:
    """An all-zero pixel (norm 0) gives zeros, as F.normalize's clamp does, not NaN."""
    x = torch.zeros(1, 8, 2, 2).contiguous(memory_format=torch.channels_last)
    bias_norm_silu_(x, None, torch.ones(8), 8**0.5)
    assert torch.equal(x, torch.zeros_like(x))


def test_layout_is_checked() -> None:
    x = torch.zeros(2, 8, 3, 3)  # NCHW: channels not contiguous
    assert not supports(x)
    assert supports(x.contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="channels-last"):
        bias_norm_silu_(x, None, torch.ones(8), 1.0)
    with pytest.raises(ValueError, match="8 elements"):
        bias_norm_silu_(x.contiguous(memory_format=torch.channels_last), torch.ones(7), torch.ones(8), 1.0)
