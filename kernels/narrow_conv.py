"""A 3x3 convolution (padding 1) to a few output channels, from channels-last frames (the TCDecoder's last conv).

cuDNN tiles a convolution's output channels in blocks of 64 or more, so the decoder's conv from 128
channels to 3 (padded to 8) did 8-16x the useful tensor work and ran at ~60 TFLOP/s: 2.58 ms per 4K
frame on an H100, where reading its 2.1 GB input once takes ~0.7 ms. This kernel runs the conv as an
implicit GEMM with the output channels padded to 16 (the narrowest tensor-core product): one program
per tile of ``ROWS x BLOCK_X`` output pixels, nine tap products of ``(ROWS * BLOCK_X, C) x (C, 16)``
whose shifted input tiles mostly come from the caches, and the few real channels written straight into
output planes of any strides (a ``(N, 3, H, W)`` image, or the frames of a ``(3, T, H, W)`` video).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.triton_compat import FP_FUSION

TAPS = 9
PADDED_OUTPUTS = 16
"""Output channels of each tap product (the real ones, zero-padded): the narrowest ``tl.dot``."""


@dataclass(frozen=True)
class NarrowTile:
    """Output pixels per program (``rows x block_x``) and the launch's warps and pipeline stages."""

    rows: int = 1
    block_x: int = 128
    num_warps: int = 4
    num_stages: int = 1


DEFAULT_TILE = NarrowTile()
"""See docs/benchmarks.md for the sweep that chose it."""


@triton.jit
def _narrow_conv_kernel(
    X, W, BIAS, OUT, H, WIDTH, OUTPUTS,
    stride_xn, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
    C: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_X: tl.constexpr, OUT_P: tl.constexpr,
):
    """Program = output rows ``ROWS * pid(0) + [0, ROWS)`` of frame ``pid(2)``, columns
    ``BLOCK_X * pid(1) + [0, BLOCK_X)``; ``W`` holds the taps as ``(9, C, OUT_P)`` (tap ``3 * dy + dx``),
    zero past the real output channels."""
    n = tl.program_id(2).to(tl.int64)
    pixel = tl.arange(0, ROWS * BLOCK_X)
    y = tl.program_id(0) * ROWS + pixel // BLOCK_X
    xs = tl.program_id(1) * BLOCK_X + pixel % BLOCK_X
    cs = tl.arange(0, C)
    outs = tl.arange(0, OUT_P)
    acc = tl.zeros((ROWS * BLOCK_X, OUT_P), dtype=tl.float32)
    for tap in range(9):
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        src_y = y + dy
        src_x = xs + dx
        keep = (src_x >= 0) & (src_x < WIDTH) & (src_y >= 0) & (src_y < H)
        tile = tl.load(X + n * stride_xn + (src_y * stride_xh + src_x * stride_xw)[:, None] + cs[None, :],
                       mask=keep[:, None], other=0.0)
        taps = tl.load(W + (tap * C + cs)[:, None] * OUT_P + outs[None, :])
        acc = tl.dot(tile, taps, acc)
    if HAS_BIAS:
        acc += tl.load(BIAS + outs, mask=outs < OUTPUTS, other=0.0).to(tl.float32)[None, :]
    dst = OUT + n * stride_on + (y * stride_oh + xs * stride_ow)[:, None] + (outs * stride_oc)[None, :]
    tl.store(dst, acc.to(OUT.dtype.element_ty), mask=((xs < WIDTH) & (y < H))[:, None] & (outs < OUTPUTS)[None, :])


def pack_taps(weight: torch.Tensor) -> torch.Tensor:
    """``(O, C, 3, 3)`` -> ``(9, C, 16)`` in the weight's dtype: tap ``3 * dy + dx``, output channels
    zero-padded to :data:`PADDED_OUTPUTS`."""
    outputs, channels, kh, kw = weight.shape
    if (kh, kw) != (3, 3) or outputs > PADDED_OUTPUTS:
        raise ValueError(f"needs a 3x3 conv to at most {PADDED_OUTPUTS} channels, got {tuple(weight.shape)}")
    packed = weight.new_zeros((TAPS, channels, PADDED_OUTPUTS))
    packed[:, :, :outputs] = weight.permute(2, 3, 1, 0).reshape(TAPS, channels, outputs)
    return packed


def supported(x: torch.Tensor) -> bool:
    """Whether :func:`narrow_conv` takes ``x (N, C, H, W)``: channels-last storage (each pixel's ``C``
    channels contiguous) and ``C`` a power of two from 16 to 256."""
    c = x.shape[1]
    return x.dim() == 4 and x.stride(1) == 1 and 16 <= c <= 256 and c & (c - 1) == 0


def narrow_conv(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, outputs: int,
                out: torch.Tensor | None = None, tile: NarrowTile = DEFAULT_TILE) -> torch.Tensor:
    """The 3x3 conv (padding 1) of ``x (N, C, H, W)`` (see :func:`supported`) with the taps of
    :func:`pack_taps` and ``bias (outputs,)``: ``(N, outputs, H, W)``, contiguous or written into ``out``
    (any strides). Accumulates in fp32 and rounds once to ``x``'s dtype."""
    n, c, h, w = x.shape
    if not supported(x):
        raise ValueError(f"narrow_conv needs channels-last frames of 16-256 (power of two) channels, got "
                         f"{tuple(x.shape)} with strides {x.stride()}")
    if tuple(packed.shape) != (TAPS, c, PADDED_OUTPUTS) or packed.dtype != x.dtype or not packed.is_contiguous():
        raise ValueError(f"packed taps must be contiguous {x.dtype} {(TAPS, c, PADDED_OUTPUTS)}, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    if not 1 <= outputs <= PADDED_OUTPUTS or (bias is not None and tuple(bias.shape) != (outputs,)):
        raise ValueError(f"{outputs} outputs with a bias of {None if bias is None else tuple(bias.shape)}")
    if out is None:
        out = torch.empty((n, outputs, h, w), dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (n, outputs, h, w) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be {x.dtype} {(n, outputs, h, w)} on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if out.numel():
        grid = (triton.cdiv(h, tile.rows), triton.cdiv(w, tile.block_x), n)
        _narrow_conv_kernel[grid](
            x, packed, packed if bias is None else bias, out, h, w, outputs,
            x.stride(0), x.stride(2), x.stride(3), *out.stride(),
            C=c, HAS_BIAS=bias is not None, ROWS=tile.rows, BLOCK_X=tile.block_x, OUT_P=PADDED_OUTPUTS,
            num_warps=tile.num_warps, num_stages=tile.num_stages, **FP_FUSION,
        )
    return out
