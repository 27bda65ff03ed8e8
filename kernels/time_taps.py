"""The input of the LQ projection's causal conv as a 2D conv, built in one pass.

``CausalConv`` (:mod:`upscaler.models.lq_proj`) runs a (4, 3, 3) conv with time stride 2 as a 2D conv
over the four time taps stacked along channels. Its input per output frame ``f`` is the frames
``2f .. 2f + 3`` of the time-padded clip (two frames of context in front: the previous call's last
input frames, or the first frame replicated), each replicate-padded by one pixel in space, stored
channels-last with tap-major channels: ``(B * F, h + 2, w + 2, 4 * C)``. PyTorch built it in three
passes (time concatenation, replicate padding, the unfold copy); on an H200 at 4K they took ~3 ms per
call of the first conv and ~4.6 ms of the second. This kernel reads the source frames with any
strides and writes each output pixel's channels once. With ``inverse_scale`` (``precision = "fp8"``) it
writes e4m3 instead: each channel multiplied by its static inverse scale, saturated to e4m3's range, for
the FP8 conv (:mod:`kernels.fp8_conv`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_compat import FP_FUSION

TAPS = 4
TIME_STRIDE = 2
CONTEXT_FRAMES = 2
BLOCK_X = 32
BLOCK_C = 64


@triton.jit
def _time_taps_kernel(
    X, CTX, OUT, INV_SCALE, C, H, W, FRAMES,
    sxb, sxc, sxt, sxh, sxw,
    scb, scc, sct, sch, scw,
    HAS_CONTEXT: tl.constexpr, QUANTISE: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program ((b * FRAMES + f) * (H + 2) + padded row, x block, channel block): ``BLOCK_X`` padded
    columns of one padded row of output frame ``f``, ``BLOCK_C`` channels of every tap (the 4 taps and
    the time stride 2 are written out: :data:`TAPS`, :data:`TIME_STRIDE`)."""
    row = tl.program_id(0).to(tl.int64)
    out_frame = row // (H + 2)
    y = row % (H + 2)
    b = out_frame // FRAMES
    f = out_frame % FRAMES
    src_y = tl.minimum(tl.maximum(y - 1, 0), H - 1)
    xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
    src_x = tl.minimum(tl.maximum(xs - 1, 0), W - 1)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    keep = (xs < W + 2)[:, None] & (cs < C)[None, :]
    out_row = OUT + (row * (W + 2) + xs)[:, None] * (4 * C) + cs[None, :]
    if QUANTISE:
        inverse = tl.load(INV_SCALE + cs, mask=cs < C, other=0.0)[None, :]
    for tap in tl.static_range(4):
        t = 2 * f + tap - 2  # frame index in X; -2 and -1 are the context frames
        if HAS_CONTEXT:
            if t < 0:
                src = CTX + b * scb + (t + 2) * sct + src_y * sch + src_x[:, None] * scw + cs[None, :] * scc
            else:
                src = X + b * sxb + t * sxt + src_y * sxh + src_x[:, None] * sxw + cs[None, :] * sxc
        else:
            src = X + b * sxb + tl.maximum(t, 0) * sxt + src_y * sxh + src_x[:, None] * sxw + cs[None, :] * sxc
        values = tl.load(src, mask=keep)
        if QUANTISE:
            values = tl.minimum(tl.maximum(values.to(tl.float32) * inverse, -448.0), 448.0)
        tl.store(out_row + tap * C, values.to(OUT.dtype.element_ty), mask=keep)


def stack_time_taps(x: torch.Tensor, context: torch.Tensor | None,
                    inverse_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``(B * F, 4C, h + 2, w + 2)`` channels-last (stored ``(B * F, h + 2, w + 2, 4C)``, tap-major
    channels) from ``x (B, C, T, h, w)`` and its two context frames ``context (B, C, 2, h, w)`` (None:
    the first frame replicated twice), any strides; ``F = (T + 2 - 4) // 2 + 1``. With ``inverse_scale``
    (fp32, ``C`` values): e4m3 ``clamp(x * inverse_scale[c], -448, 448)``, else ``x``'s dtype."""
    b, c, t, h, w = x.shape
    if t + CONTEXT_FRAMES < TAPS:
        raise ValueError(f"{t} frames and {CONTEXT_FRAMES} of context are fewer than the conv's {TAPS} taps")
    if context is not None and (tuple(context.shape) != (b, c, CONTEXT_FRAMES, h, w) or context.dtype != x.dtype):
        raise ValueError(f"context must be {x.dtype} {(b, c, CONTEXT_FRAMES, h, w)}, got {context.dtype} "
                         f"{tuple(context.shape)}")
    if inverse_scale is not None and (inverse_scale.numel() != c or inverse_scale.dtype != torch.float32):
        raise ValueError(f"inverse_scale must be {c} float32 values, got {inverse_scale.dtype} {tuple(inverse_scale.shape)}")
    frames = (t + CONTEXT_FRAMES - TAPS) // TIME_STRIDE + 1
    dtype = x.dtype if inverse_scale is None else torch.float8_e4m3fn
    out = torch.empty((b * frames, TAPS * c, h + 2, w + 2), dtype=dtype, device=x.device,
                      memory_format=torch.channels_last)
    ctx = x if context is None else context
    grid = (b * frames * (h + 2), triton.cdiv(w + 2, BLOCK_X), triton.cdiv(c, BLOCK_C))
    _time_taps_kernel[grid](
        x, ctx, out, inverse_scale if inverse_scale is not None else out, c, h, w, frames, *x.stride(), *ctx.stride(),
        HAS_CONTEXT=context is not None, QUANTISE=inverse_scale is not None, BLOCK_X=BLOCK_X, BLOCK_C=BLOCK_C,
        num_warps=4, **FP_FUSION,
    )
    return out
