"""A MemBlock's first conv, reading each frame and the frame before it in place (no stacked copy).

A TCDecoder MemBlock's first conv is a 3x3 conv over ``cat(x[t], x[t - 1])`` (channels), the frame before
a group's first frame carried from the previous group (``past``). :mod:`kernels.frame_pairs` writes that
stacked input (twice the channels) for cuDNN to read back; here the reduction of an implicit GEMM runs
over the 9 taps times both halves, each half's tile loaded from its own frame (``x[t]``, ``x[t - 1]`` or
``past``), with bias and ReLU in the epilogue: one program per ``ROWS x BLOCK_X`` output pixels of one
frame and ``BLOCK_N`` output channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.triton_compat import FP_FUSION

TAPS = 9


@dataclass(frozen=True)
class PairTile:
    """Output pixels per program (``rows x block_x``), output channels (``block_n``), reduction chunk
    (``block_k``) and launch options."""

    rows: int = 1
    block_x: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3


DEFAULT_TILE = PairTile()
"""See docs/benchmarks.md for the sweep that chose it."""


@triton.jit
def _pair_conv_kernel(
    X, PAST, W, BIAS, OUT, H, WIDTH, C, N, FRAMES,
    HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program ``pid(0)`` = (pixel tile, channel tile) with the channel tile varying fastest, ``pid(1)`` =
    frame ``f`` (entry ``f // FRAMES``, time ``f % FRAMES``). ``X``, ``PAST`` and ``OUT`` are canonical
    channels-last; ``W`` holds ``(9 taps, 2C, N)``, the current frame's channels first."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    n0 = (pid % n_tiles) * BLOCK_N
    tile = pid // n_tiles
    x_tiles = tl.cdiv(WIDTH, BLOCK_X)
    frame = tl.program_id(1).to(tl.int64)
    pixels = H * WIDTH
    current = X + frame * pixels * C
    if frame % FRAMES == 0:
        previous = PAST + (frame // FRAMES) * pixels * C
    else:
        previous = X + (frame - 1) * pixels * C
    pixel = tl.arange(0, ROWS * BLOCK_X)
    y = (tile // x_tiles) * ROWS + pixel // BLOCK_X
    x = (tile % x_tiles) * BLOCK_X + pixel % BLOCK_X
    ks = tl.arange(0, BLOCK_K)
    ns = n0 + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    acc = tl.zeros((ROWS * BLOCK_X, BLOCK_N), dtype=tl.float32)
    k_steps = C // BLOCK_K
    for step in range(18 * k_steps):  # the 9 taps outer, each over the current frame's chunks then the previous'
        tap = step // (2 * k_steps)
        chunk = step % (2 * k_steps)
        src_y = y + tap // 3 - 1
        src_x = x + tap % 3 - 1
        keep = (src_y >= 0) & (src_y < H) & (src_x >= 0) & (src_x < WIDTH)
        source = current if chunk < k_steps else previous
        kc = (chunk % k_steps) * BLOCK_K
        a = tl.load(source + ((src_y * WIDTH + src_x) * C)[:, None] + (kc + ks)[None, :], mask=keep[:, None], other=0.0)
        w = tl.load(W + ((tap * 2 * C) + chunk * BLOCK_K + ks)[:, None] * N + ns[None, :], mask=n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    if HAS_BIAS:
        acc += tl.load(BIAS + ns, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0)
    dst = OUT + (frame * pixels + y * WIDTH + x)[:, None] * N + ns[None, :]
    tl.store(dst, acc.to(OUT.dtype.element_ty), mask=((y < H) & (x < WIDTH))[:, None] & n_ok[None, :])


def pack_pair_taps(weight: torch.Tensor) -> torch.Tensor:
    """``(N, 2C, 3, 3)`` -> ``(9, 2C, N)`` (tap ``3 * dy + dx``), contiguous."""
    n, c2, kh, kw = weight.shape
    if (kh, kw) != (3, 3) or c2 % 2:
        raise ValueError(f"needs a 3x3 conv over stacked frame pairs, got {tuple(weight.shape)}")
    return weight.permute(2, 3, 1, 0).reshape(TAPS, c2, n).contiguous()


def supported(x: torch.Tensor, packed: torch.Tensor, tile: PairTile = DEFAULT_TILE) -> bool:
    """Whether :func:`pair_conv` takes ``x (n, C, H, W)``: canonical channels-last, ``C`` a multiple of the
    tile's ``block_k``, taps packed for ``2C`` input channels."""
    from kernels.frame_pairs import canonical_channels_last

    return (x.dim() == 4 and canonical_channels_last(x) and x.shape[1] % tile.block_k == 0 and packed.dim() == 3
            and packed.shape[:2] == (TAPS, 2 * x.shape[1]))


def pair_conv(x: torch.Tensor, past: torch.Tensor, batch: int, packed: torch.Tensor, bias: torch.Tensor | None,
              tile: PairTile = DEFAULT_TILE) -> torch.Tensor:
    """``relu(conv3x3(stack_with_previous(x, past, batch)) + bias)`` without the stacked copy:
    ``(n, N, H, W)`` channels-last from frames ``x (n = batch * T, C, H, W)`` (batch-major), the frames
    before each entry ``past (batch, C, H, W)`` (both canonical channels-last) and the taps of
    :func:`pack_pair_taps`. Accumulates in fp32 and rounds once to ``x``'s dtype."""
    from kernels.frame_pairs import canonical_channels_last

    n, c, h, w = x.shape
    if not supported(x, packed, tile):
        raise ValueError(f"pair_conv needs canonical channels-last frames with channels a multiple of {tile.block_k} "
                         f"and taps packed for twice them; got {tuple(x.shape)} strides {x.stride()}, taps "
                         f"{tuple(packed.shape)}")
    if n % batch or tuple(past.shape) != (batch, c, h, w) or not canonical_channels_last(past):
        raise ValueError(f"past {tuple(past.shape)} must be canonical channels-last frames for {batch} entries "
                         f"of {tuple(x.shape)}")
    outputs = packed.shape[2]
    if packed.dtype != x.dtype or past.dtype != x.dtype or not packed.is_contiguous():
        raise ValueError(f"frames {x.dtype}, past {past.dtype} and contiguous taps {packed.dtype} must match")
    if bias is not None and tuple(bias.shape) != (outputs,):
        raise ValueError(f"bias must be ({outputs},), got {tuple(bias.shape)}")
    out = torch.empty((n, outputs, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if out.numel():
        tiles = triton.cdiv(h, tile.rows) * triton.cdiv(w, tile.block_x)
        grid = (tiles * triton.cdiv(outputs, tile.block_n), n)
        _pair_conv_kernel[grid](
            x, past, packed, packed if bias is None else bias, out, h, w, c, outputs, n // batch,
            HAS_BIAS=bias is not None, ROWS=tile.rows, BLOCK_X=tile.block_x, BLOCK_N=tile.block_n,
            BLOCK_K=tile.block_k, num_warps=tile.num_warps, num_stages=tile.num_stages, **FP_FUSION,
        )
    return out
