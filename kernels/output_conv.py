"""The TCDecoder's last conv (3x3, padding 1, C channels to the 3 image channels) as one streaming pass.

cuDNN tiles output channels by 64 and more: the conv from 128 channels to 3 (padded to 8) ran at
2.70 ms per 4K frame on an H100, where one read of its 2.1 GB input takes ~0.7 ms. An implicit GEMM
that loads the nine shifted input tiles of each output tile (tried before, 3.05 ms) moves the input
from L2 nine times. Here each input row is read **once** per program and multiplied by all nine taps
(three products ``(BLOCK_W, C) x (C, 16)``, one per kernel column ``dx``, whose 16 columns hold the three
kernel rows ``dy`` times the output channels); the column shifts happen on the small products
(:func:`triton.language.gather` along the pixels), and the row shifts by streaming down the image with
the products of the last three rows kept in registers: output row ``y`` sums kernel row 0 of input row
``y - 1``, row 1 of ``y`` and row 2 of ``y + 1``. A program covers ``ROWS`` output rows (reading two
more) and ``BLOCK_W - 2`` output columns (reading one more on each side), loading each row one row
ahead of its products; the few real channels go straight into output planes of any strides. On an H100
at 4K: 0.78-0.81 ms per frame against cuDNN's 2.70, and correctly rounded where cuDNN's bf16 output is
not in about a third of the pixels (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.frame_offsets import frame_fits_int32
from kernels.triton_compat import FP_FUSION

GROUP = 4
"""Output channels per kernel-row group of a product (at most this many output channels)."""
PRODUCT_WIDTH = 16
"""Columns of each tap product: three kernel-row groups and a group of zeros (the narrowest ``tl.dot``)."""


@dataclass(frozen=True)
class OutputConvTile:
    """Output rows per program, input columns per program (two more than its output columns) and launch
    options."""

    rows: int = 64
    block_w: int = 64
    num_warps: int = 4
    num_stages: int = 1


DEFAULT_TILE = OutputConvTile()
"""See docs/benchmarks.md for the sweep that chose it."""


@triton.jit
def _load_row(XF, row, H, cols, WIDTH, stride_xh, stride_xw, ks):
    """``(len(cols), C)``: pixels ``cols`` of input row ``row``, zero outside the image. (A row outside it
    empties the column range: the mask stays one block comparison, which every interpreter keeps boolean.)"""
    width = tl.where((row >= 0) & (row < H), WIDTH, 0)
    keep = (cols >= 0) & (cols < width)
    return tl.load(XF + row * stride_xh + (cols * stride_xw)[:, None] + ks[None, :], mask=keep[:, None], other=0.0)


@triton.jit
def _gathered_sums(x, w0, w1, w2):
    """``(BLOCK_W, 16)``: the loaded row ``x`` times the taps of all three kernel columns, summed at the
    output column each serves: tile column ``o`` gets kernel column ``dx`` of input column ``o + dx``
    (the last two tile columns are not outputs)."""
    at = tl.arange(0, x.shape[0])[:, None] + tl.zeros((1, w0.shape[1]), dtype=tl.int32)
    last = x.shape[0] - 1
    sums = tl.dot(x, w0)
    sums += tl.gather(tl.dot(x, w1), tl.minimum(at + 1, last), 0)
    sums += tl.gather(tl.dot(x, w2), tl.minimum(at + 2, last), 0)
    return sums


@triton.jit
def _output_conv_kernel(
    X, W, BIAS, OUT, H, WIDTH, OUTPUTS,
    stride_xn, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
    C: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Program = output rows ``ROWS * pid(1) + [0, ROWS)`` of frame ``pid(2)``, output columns
    ``pid(0) * (BLOCK_W - 2) + [0, BLOCK_W - 2)``. ``W`` holds the taps as ``(3 dx, C, 4 * GROUP)``, column
    ``GROUP * dy + channel``, zero elsewhere. Each input row is loaded one row ahead of its products."""
    OUT_W: tl.constexpr = BLOCK_W - 2
    WIDE: tl.constexpr = 4 * GROUP
    frame = tl.program_id(2).to(tl.int64)
    x0 = tl.program_id(0) * OUT_W
    local = tl.arange(0, BLOCK_W)
    cols = x0 - 1 + local
    ks = tl.arange(0, C)
    js = tl.arange(0, WIDE)
    taps = W + ks[:, None] * WIDE + js[None, :]
    w0 = tl.load(taps)
    w1 = tl.load(taps + C * WIDE)
    w2 = tl.load(taps + 2 * C * WIDE)
    XF = X + frame * stride_xn
    y0 = tl.program_id(1) * ROWS
    above = _gathered_sums(_load_row(XF, y0 - 1, H, cols, WIDTH, stride_xh, stride_xw, ks), w0, w1, w2)
    here = _gathered_sums(_load_row(XF, y0, H, cols, WIDTH, stride_xh, stride_xw, ks), w0, w1, w2)
    x_next = _load_row(XF, y0 + 1, H, cols, WIDTH, stride_xh, stride_xw, ks)
    group = (js // GROUP)[None, :]
    channels = tl.arange(0, GROUP)
    if HAS_BIAS:
        bias = tl.load(BIAS + channels, mask=channels < OUTPUTS, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((GROUP,), dtype=tl.float32)
    out_count = tl.minimum(OUT_W, WIDTH - x0)  # this program's output columns
    channel_ok = (channels < OUTPUTS)[None, :]
    dst = OUT + frame * stride_on + ((x0 + local) * stride_ow)[:, None] + (channels * stride_oc)[None, :]
    for r in range(ROWS):
        y = y0 + r
        x_row = x_next
        x_next = _load_row(XF, y + 2, H, cols, WIDTH, stride_xh, stride_xw, ks)
        below = _gathered_sums(x_row, w0, w1, w2)
        by_row = tl.where(group == 0, above, tl.where(group == 1, here, below))
        pixels = tl.sum(tl.reshape(by_row, (BLOCK_W, 4, GROUP)), axis=1) + bias[None, :]
        store = (local < tl.where(y < H, out_count, 0))[:, None] & channel_ok
        tl.store(dst + y * stride_oh, pixels.to(OUT.dtype.element_ty), mask=store)
        above = here
        here = below


def pack_output_taps(weight: torch.Tensor) -> torch.Tensor:
    """``(O, C, 3, 3)`` -> ``(3 dx, C, 16)`` in the weight's dtype: column ``GROUP * dy + o``, zeros past the
    ``O <= GROUP`` output channels and in the fourth group."""
    outputs, channels, kh, kw = weight.shape
    if (kh, kw) != (3, 3) or outputs > GROUP:
        raise ValueError(f"needs a 3x3 conv to at most {GROUP} channels, got {tuple(weight.shape)}")
    packed = weight.new_zeros((3, channels, PRODUCT_WIDTH // GROUP, GROUP))
    packed[:, :, :3, :outputs] = weight.permute(3, 1, 2, 0)
    return packed.reshape(3, channels, PRODUCT_WIDTH)


def supported(x: torch.Tensor) -> bool:
    """Whether :func:`output_conv` takes ``x (F, C, H, W)``: channels-last storage, ``C`` a power of two
    from 16 to 256, and a frame within 32-bit offsets (up to 4K at 128 channels)."""
    c = x.shape[1] if x.dim() == 4 else 0
    return (x.dim() == 4 and x.stride(1) == 1 and 16 <= c <= 256 and c & (c - 1) == 0
            and frame_fits_int32(tuple(x.shape), x.stride()))


def output_conv(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, outputs: int,
                out: torch.Tensor | None = None, tile: OutputConvTile = DEFAULT_TILE) -> torch.Tensor:
    """The 3x3 conv (padding 1) of ``x (F, C, H, W)`` (see :func:`supported`) with the taps of
    :func:`pack_output_taps` and ``bias (outputs,)``: ``(F, outputs, H, W)``, contiguous, or written into
    ``out`` (any strides within 32-bit offsets per frame). Accumulates in fp32 and rounds once to ``x``'s
    dtype."""
    frames, c, h, w = x.shape
    if not supported(x):
        raise ValueError(f"output_conv needs channels-last frames of 16-256 (power of two) channels within "
                         f"32-bit offsets, got {tuple(x.shape)} with strides {x.stride()}")
    if tuple(packed.shape) != (3, c, PRODUCT_WIDTH) or packed.dtype != x.dtype or not packed.is_contiguous():
        raise ValueError(f"packed taps must be contiguous {x.dtype} {(3, c, PRODUCT_WIDTH)}, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    if not 1 <= outputs <= GROUP or (bias is not None and tuple(bias.shape) != (outputs,)):
        got = None if bias is None else tuple(bias.shape)
        raise ValueError(f"{outputs} outputs (1 to {GROUP}) with a bias of {got}")
    shape = (frames, outputs, h, w)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be {x.dtype} {shape} on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if not frame_fits_int32(shape, out.stride()):
        raise ValueError(f"out frames of {shape[1:]} with strides {out.stride()} pass 32-bit offsets")
    if out.numel():
        grid = (triton.cdiv(w, tile.block_w - 2), triton.cdiv(h, tile.rows), frames)
        _output_conv_kernel[grid](
            x, packed, packed if bias is None else bias, out, h, w, outputs,
            x.stride(0), x.stride(2), x.stride(3), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            C=c, GROUP=GROUP, HAS_BIAS=bias is not None, ROWS=tile.rows, BLOCK_W=tile.block_w, 
            num_warps=tile.num_warps, num_stages=tile.num_stages, **FP_FUSION,
        )
    return out
