"""The LQ projection's conv epilogue in one pass: bias, channel RMS norm, gain and SiLU.

After each causal conv, FlashVSR's LQ projection computes ``silu(normalize(conv + bias, dim=channels)
* sqrt(C) * gamma)``. The conv output is stored channels-last, so every pixel's ``C`` channels are
one contiguous row. PyTorch ran it as six passes over the conv output (cuDNN's separate bias add for
channels-last output, the norm reduction, the division, two scalings, the SiLU); on an H200 at 4K
those took ~5.6 ms per streaming step; this kernel takes ~0.7 ms. It works in place, one row per
program, in fp32 with one rounding at the end (the eager chain rounds after each op, so the two agree
to bf16 rounding; against float64 the kernel is the closer of the two).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.frame_pairs import canonical_channels_last
from kernels.triton_compat import FP_FUSION

NORM_EPS = 1e-12  # F.normalize's default: the norm is clamped to at least this


@triton.jit
def _bias_norm_silu_kernel(X, BIAS, GAMMA, C, row_stride, gain, eps, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program ``r``: row ``r`` (one pixel's channels) of ``X``, rewritten in place."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    keep = cols < C
    ptrs = X + row * row_stride + cols
    x = tl.load(ptrs, mask=keep, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(BIAS + cols, mask=keep, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=0))
    y = x * (gain / tl.maximum(norm, eps)) * tl.load(GAMMA + cols, mask=keep, other=0.0).to(tl.float32)
    y = y / (1.0 + tl.exp(-y))
    tl.store(ptrs, y.to(X.dtype.element_ty), mask=keep)


def supports(x: torch.Tensor) -> bool:
    """Whether ``x (N, C, h, w)`` has the layout the kernel rewrites: stored as contiguous ``(N, h, w, C)``
    (:func:`kernels.frame_pairs.canonical_channels_last`), so every pixel's channels are one row."""
    return x.dim() == 4 and canonical_channels_last(x)


def bias_norm_silu_(x: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, gain: float) -> torch.Tensor:
    """In place on channels-last ``x (N, C, h, w)``: ``silu(F.normalize(x + bias, dim=1) * gain * gamma)``
    with ``bias`` and ``gamma`` of ``C`` elements (any shape); returns ``x``."""
    if not supports(x):
        raise ValueError(f"expected channels-last (N, C, h, w) with contiguous channels, got strides {x.stride()}")
    c = x.shape[1]
    if gamma.numel() != c or (bias is not None and bias.numel() != c):
        raise ValueError(f"bias and gamma must have {c} elements")
    rows = x.numel() // c
    if rows:
        _bias_norm_silu_kernel[(rows,)](
            x, (bias if bias is not None else gamma).reshape(-1), gamma.reshape(-1), c, c, float(gain), NORM_EPS,
            HAS_BIAS=bias is not None, BLOCK_C=triton.next_power_of_2(c), num_warps=8 if c > 1024 else 4, **FP_FUSION,
        )
    return x
