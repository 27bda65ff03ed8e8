"""A 3x3 convolution as one FP8 matrix product over shifted rows (implicit GEMM), for the LQ projection.

The input is already padded and channels-last, ``(F, h + 2, w + 2, C)`` e4m3 (the LQ projection's
:func:`kernels.time_taps.stack_time_taps` writes it so). Flatten each frame's padded pixels into rows of
``C`` channels: with ``Wp = w + 2``, output pixel ``(y, x)`` computed at row ``p = y * Wp + x`` reads, for
tap ``(dy, dx)``, input row ``p + dy * Wp + dx``. So the conv is one product whose reduction runs over the
9 taps times ``C``, each tap's operand the same 2D matrix shifted by a constant number of rows: every
tile is a plain TMA box, nothing is gathered or copied. Rows ``p`` whose ``x`` is ``w`` or ``w + 1`` (two
per padded row, 0.8% at 4K) are computed and not stored.

Weights ``(N, 9 * C)`` e4m3, tap-major along the reduction (``k = (3 * dy + dx) * C + c``), one fp32
scale per output channel; the FP8 tensor cores (sm_90, sm_89) accumulate as they do, without a periodic
fp32 promotion: over the second LQ conv's 73,728-long reduction that is 0.8% relative from exact fp32
sums on an H200, against FP8's own 3.8% from the bf16 conv. The output is ``(F, N, h, w)`` channels-last
(bf16 by default), scaled per output channel, optionally with a bias. On an H100 at 4K the two LQ convs
take 5.30 and 11.93 ms against cuDNN's bf16 9.64 and 30.82 (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.tile_order import grouped_tile
from kernels.triton_compat import FP_FUSION

E4M3 = torch.float8_e4m3fn
TAPS = 9


@dataclass(frozen=True)
class ConvTile:
    """One program's tile and launch options; ``group_m`` row tiles that read the same weight tiles run
    together (L2 reuse). The default measured fastest of six at both LQ convs' 4K and 1080p shapes on an
    H100 (``scripts/bench_lq_conv.py``, docs/benchmarks.md)."""

    block_m: int = 256
    block_n: int = 128
    block_k: int = 128
    group_m: int = 8
    warps: int = 8
    stages: int = 4


DEFAULT_TILE = ConvTile()


@triton.jit
def _conv3x3_fp8_kernel(
    x_desc, w_desc, OUT, SCALE, BIAS, FRAME_ROWS, PADDED_W, H, W, N, C,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Program = one frame's ``BLOCK_M`` output rows (padded-width raster) x ``BLOCK_N`` output channels."""
    frame = tl.program_id(1)
    row_tiles = tl.cdiv(H * PADDED_W, BLOCK_M)
    col_tiles = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    row_tile, col_tile = grouped_tile(pid, row_tiles, col_tiles, GROUP_M)
    p0 = row_tile * BLOCK_M
    n0 = col_tile * BLOCK_N
    base = frame * FRAME_ROWS + p0
    k_steps = C // BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for step in range(9 * k_steps):  # the 3 x 3 taps (TAPS), each over C in BLOCK_K chunks
        tap = step // k_steps
        kc = (step % k_steps) * BLOCK_K
        shift = (tap // 3) * PADDED_W + tap % 3
        a = x_desc.load([base + shift, kc])
        b = w_desc.load([n0, tap * C + kc])
        acc = tl.dot(a, b.T, acc)
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    out = acc * tl.load(SCALE + cols, mask=col_ok, other=0.0)[None, :]
    if HAS_BIAS:
        out += tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    p = p0 + tl.arange(0, BLOCK_M)
    y = p // PADDED_W
    x = p % PADDED_W
    row_ok = (y < H) & (x < W)
    pixel = (frame * H + y).to(tl.int64) * W + x
    tl.store(OUT + pixel[:, None] * N + cols[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def supported(x: torch.Tensor, weight: torch.Tensor, tile: ConvTile = DEFAULT_TILE) -> bool:
    """Whether the kernel takes this input and weight: channels-last e4m3 input whose channels are a
    multiple of the tile's ``block_k``, a ``(N, 9 * C)`` e4m3 weight."""
    return (x.dim() == 4 and x.dtype == E4M3 and weight.dtype == E4M3 and x.shape[1] % tile.block_k == 0
            and tuple(weight.shape) == (weight.shape[0], TAPS * x.shape[1])
            and x.is_contiguous(memory_format=torch.channels_last) and weight.is_contiguous())


def conv3x3_fp8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.bfloat16, tile: ConvTile = DEFAULT_TILE) -> torch.Tensor:
    """``(F, N, h, w)`` channels-last: the valid 3x3 conv of the padded e4m3 input ``x (F, C, h + 2, w + 2)``
    (channels-last) with ``weight (N, 9 * C)`` e4m3 (tap-major), times ``scale (N,)`` fp32, plus ``bias``."""
    if not supported(x, weight, tile):
        raise ValueError(f"conv3x3_fp8 takes channels-last e4m3 input with channels a multiple of {tile.block_k} and an "
                         f"e4m3 (N, 9 * C) weight; got {x.dtype} {tuple(x.shape)} strides {x.stride()}, "
                         f"{weight.dtype} {tuple(weight.shape)}")
    frames, c, hp, wp = x.shape
    n = weight.shape[0]
    h, w = hp - 2, wp - 2
    rows = x.permute(0, 2, 3, 1).reshape(frames * hp * wp, c)
    x_desc = TensorDescriptor.from_tensor(rows, [tile.block_m, tile.block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [tile.block_n, tile.block_k])
    out = torch.empty((frames, n, h, w), dtype=out_dtype, device=x.device, memory_format=torch.channels_last)
    grid = (triton.cdiv(h * wp, tile.block_m) * triton.cdiv(n, tile.block_n), frames)
    _conv3x3_fp8_kernel[grid](
        x_desc, w_desc, out, scale, bias if bias is not None else scale, hp * wp, wp, h, w, n, c,
        HAS_BIAS=bias is not None, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
        GROUP_M=tile.group_m, num_warps=tile.warps, num_stages=tile.stages, **FP_FUSION,
    )
    return out
