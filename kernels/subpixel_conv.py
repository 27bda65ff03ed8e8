"""The 3x3 conv of a 2x nearest-upsampled image as one kernel that writes the upsampled output in place.

:mod:`upscaler.models.upsampled_conv` runs this conv as a 2x2 conv of the low-resolution image to four
output phases (``4 * C_out`` channels, cuDNN), then :mod:`kernels.subpixel` moves each phase to its
pixels: the phase output is written and read back once more at full resolution (at the TCDecoder's last
stage, 2.1 GB each way per 4K frame). Here one program computes one phase ``(a, b)`` of ``ROWS x BLOCK_J``
low-resolution pixels for ``BLOCK_N`` output channels, an implicit GEMM over the phase's four taps (its
shifted input tiles mostly come from the caches), and stores the result, with bias and ReLU, straight at
output pixels ``(2i + a, 2j + b)``. On an H100 at the last stage's 4K shape (1088x1920x128 -> 2176x3840x128,
ReLU) it takes 2.57 ms per frame against 3.25 for the phase conv and the interleave (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.frame_offsets import frame_fits_int32
from kernels.triton_compat import FP_FUSION

PHASES = 4
PHASE_TAPS = 4


@dataclass(frozen=True)
class SubpixelTile:
    """Low-resolution pixels per program (``rows x block_j``), output channels (``block_n``), reduction
    chunk (``block_k``) and launch options."""

    rows: int = 1
    block_j: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3


DEFAULT_TILE = SubpixelTile()
"""See docs/benchmarks.md for the sweep that chose it."""


@triton.jit
def _subpixel_conv_kernel(
    X, W, BIAS, OUT, H, WIDTH, C, N,
    stride_xn, stride_xh, stride_xw, stride_on, stride_oc, stride_oh, stride_ow,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, ROWS: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program ``pid(0)`` = (pixel tile, phase, channel tile) with the phase and channel tile varying
    fastest (the programs that read the same input tile run together); ``pid(1)`` = frame. ``W`` holds the
    phase taps as ``(4 phases, 4 taps, C, N)``; ``C`` must be a multiple of ``BLOCK_K``."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    phase = (pid // n_tiles) % 4
    n0 = (pid % n_tiles) * BLOCK_N
    tile = pid // (4 * n_tiles)
    j_tiles = tl.cdiv(WIDTH, BLOCK_J)
    frame = tl.program_id(1).to(tl.int64)
    a = phase // 2
    b = phase % 2
    pixel = tl.arange(0, ROWS * BLOCK_J)
    i = (tile // j_tiles) * ROWS + pixel // BLOCK_J
    j = (tile % j_tiles) * BLOCK_J + pixel % BLOCK_J
    ks = tl.arange(0, BLOCK_K)
    ns = n0 + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    acc = tl.zeros((ROWS * BLOCK_J, BLOCK_N), dtype=tl.float32)
    k_steps = C // BLOCK_K
    for step in range(4 * k_steps):
        tap = step // k_steps
        kc = (step % k_steps) * BLOCK_K
        src_i = i + a - 1 + tap // 2
        src_j = j + b - 1 + tap % 2
        keep = (src_i >= 0) & (src_i < H) & (src_j >= 0) & (src_j < WIDTH)
        x = tl.load(X + frame * stride_xn + (src_i * stride_xh + src_j * stride_xw)[:, None] + (kc + ks)[None, :],
                    mask=keep[:, None], other=0.0)
        w = tl.load(W + ((phase * 4 + tap) * C + kc + ks)[:, None] * N + ns[None, :], mask=n_ok[None, :], other=0.0)
        acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(BIAS + ns, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    dst = (OUT + frame * stride_on + ((2 * i + a) * stride_oh + (2 * j + b) * stride_ow)[:, None]
           + (ns * stride_oc)[None, :])
    tl.store(dst, acc.to(OUT.dtype.element_ty), mask=((i < H) & (j < WIDTH))[:, None] & n_ok[None, :])


def pack_phase_taps(phase_weight: torch.Tensor) -> torch.Tensor:
    """The phase-major 2x2 weight ``(4 * N, C, 2, 2)`` of :func:`upscaler.models.upsampled_conv.phase_weight`
    as ``(4 phases, 4 taps, C, N)`` (tap ``2p + q``), contiguous."""
    n4, c, kh, kw = phase_weight.shape
    if n4 % PHASES or (kh, kw) != (2, 2):
        raise ValueError(f"needs a phase-major (4 * N, C, 2, 2) weight, got {tuple(phase_weight.shape)}")
    return phase_weight.reshape(PHASES, n4 // PHASES, c, PHASE_TAPS).permute(0, 3, 2, 1).contiguous()


def supported(x: torch.Tensor, packed: torch.Tensor, out: torch.Tensor | None = None,
              tile: SubpixelTile = DEFAULT_TILE) -> bool:
    """Whether :func:`subpixel_conv` takes ``x (F, C, H, W)`` (and ``out``, channels-last when None):
    channels-last storage, ``C`` a multiple of the tile's ``block_k``, taps packed for ``C`` input channels,
    input and output frames within 32-bit offsets."""
    if not (x.dim() == 4 and x.stride(1) == 1 and x.shape[1] % tile.block_k == 0 and packed.dim() == 4
            and packed.shape[2] == x.shape[1]):
        return False
    frames, _, h, w = x.shape
    if out is None:
        n = packed.shape[3]
        out_shape, out_strides = (frames, n, 2 * h, 2 * w), (4 * h * w * n, 1, 2 * w * n, n)
    else:
        out_shape, out_strides = tuple(out.shape), out.stride()
    return frame_fits_int32(tuple(x.shape), x.stride()) and frame_fits_int32(out_shape, out_strides)


def subpixel_conv(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, relu: bool = False,
                  out: torch.Tensor | None = None, tile: SubpixelTile = DEFAULT_TILE) -> torch.Tensor:
    """``(F, N, 2H, 2W)``: the 3x3 conv (padding 1) of the nearest 2x upsampling of ``x (F, C, H, W)``, then a
    ReLU when ``relu``, from its phase taps (:func:`pack_phase_taps`) and ``bias (N,)``; channels-last, or
    written into ``out`` (any strides). Accumulates in fp32 and rounds once to ``x``'s dtype."""
    frames, c, h, w = x.shape
    if not supported(x, packed, out, tile):
        raise ValueError(f"subpixel_conv needs channels-last frames with channels a multiple of {tile.block_k}, "
                         f"taps packed for them and frames within 32-bit offsets; got {tuple(x.shape)} strides "
                         f"{x.stride()}, taps {tuple(packed.shape)}")
    n = packed.shape[3]
    if tuple(packed.shape) != (PHASES, PHASE_TAPS, c, n) or packed.dtype != x.dtype or not packed.is_contiguous():
        raise ValueError(f"packed taps must be contiguous {x.dtype} {(PHASES, PHASE_TAPS, c, n)}, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be ({n},), got {tuple(bias.shape)}")
    shape = (frames, n, 2 * h, 2 * w)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    elif tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be {x.dtype} {shape} on {x.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if out.numel():
        tiles = triton.cdiv(h, tile.rows) * triton.cdiv(w, tile.block_j)
        grid = (tiles * PHASES * triton.cdiv(n, tile.block_n), frames)
        _subpixel_conv_kernel[grid](
            x, packed, packed if bias is None else bias, out, h, w, c, n,
            x.stride(0), x.stride(2), x.stride(3), *out.stride(),
            HAS_BIAS=bias is not None, RELU=relu, ROWS=tile.rows, BLOCK_J=tile.block_j, BLOCK_N=tile.block_n,
            BLOCK_K=tile.block_k, num_warps=tile.num_warps, num_stages=tile.num_stages, **FP_FUSION,
        )
    return out
