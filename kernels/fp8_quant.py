"""Per-row e4m3 quantisation for FP8 matrix products (``torch._scaled_mm`` with rowwise scales).

A row ``v`` (one token's activations, or one output channel of a weight) becomes
``q = round_e4m3(clamp(v * (448 / a), -448, 448))`` with ``a = max(amax(|v|), 1e-12)`` and the scale
``s = a / 448`` in fp32, so ``v ~= q * s`` and the row's largest value lands on e4m3's largest finite
value. The two divisions per row are the IEEE ones (``div.rn``) on both paths and each value is
multiplied by the row's reciprocal (one fp32 product, no per-value division), so the Triton kernels and
:func:`quantise_rows_torch` agree bit for bit. :func:`quantise_rows_tile` is the ``@triton.jit`` helper the producing kernels call in their
epilogue (the layer norm in :mod:`kernels.layer_norm`); :func:`quantise_rows` is the stand-alone pass
(the attention output before ``o``, and the FFN's GELU fused in, before the down projection).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_compat import FP_FUSION

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
AMAX_FLOOR = 1e-12  # an all-zero row gets a tiny scale and quantises to zeros
BLOCK = 128  # values per scale along a row in block scaling (cuBLAS's 1x128 and 128x128 on sm_90)
GELU_TANH_C = 0.7978845608028654  # sqrt(2 / pi)
GELU_SHORTCUT = tl.constexpr(0.5)  # a row whose largest input reaches this has GELU(that input) as its largest |GELU|


MAX_BLOCK_D = 2048  # columns a program holds at once: wider rows are read in chunks, twice (amax, then quantise)
ELEMENTS_PER_PROGRAM = 2048  # rows per program = this over the block width (narrow rows: several per program)
CHUNKED_ROWS_PER_PROGRAM = 2  # wider rows: two per program, so the second read of a row finds it in cache


@triton.jit
def _row_scales(amax):
    """``(scale, reciprocal)`` fp32 of rows whose largest magnitude is ``amax``."""
    floor = tl.maximum(amax, 1e-12)
    full = tl.full(amax.shape, 448.0, tl.float32)
    return tl.math.div_rn(floor, full), tl.math.div_rn(full, floor)


@triton.jit
def quantise_rows_tile(y):
    """``(q, scale)`` of an fp32 ``(R, D)`` tile whose masked-off entries are 0: ``q`` fp32 values on the
    e4m3 grid's range (cast them to e4m3 to store), ``scale`` ``(R,)`` fp32."""
    scale, reciprocal = _row_scales(tl.max(tl.abs(y), 1))
    q = y * reciprocal[:, None]
    return tl.minimum(tl.maximum(q, -448.0), 448.0), scale


@triton.jit
def gelu_tanh_tile(x):
    """The tanh GELU of an fp32 tile (as :func:`gelu_tanh_torch`)."""
    inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))  # tanh(z) = 2 sigmoid(2z) - 1


@triton.jit
def _load_chunk(src, at, row_ok, DIM, GELU: tl.constexpr):
    """Columns ``at`` of the rows at ``src`` (0 outside), in fp32, through the GELU when asked; and the mask."""
    keep = row_ok[:, None] & (at < DIM)[None, :]
    x = tl.load(src + at[None, :], mask=keep, other=0.0).to(tl.float32)
    if GELU:
        x = gelu_tanh_tile(x)
    return x, keep


@triton.jit
def _chunked_amax(src, cols, row_ok, DIM, GELU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                  CHUNKS: tl.constexpr):
    """Largest magnitude of each row (through the GELU when asked), read ``BLOCK_D`` columns at a time.

    With the GELU, the maxima pass reads the raw rows only: the tanh GELU increases on x >= 0 and stays
    within 0.17 in magnitude below 0, so a row whose largest input is at least ``GELU_SHORTCUT`` (GELU
    0.345) has GELU(its largest input) as its largest magnitude, the same fp32 value the values' pass
    computes there. The GELU (an exp and a reciprocal on the special-function unit per value) then runs
    once per value instead of twice; only a block holding a row below that reads it again through it."""
    amax = tl.zeros([BLOCK_R], dtype=tl.float32)
    if GELU:
        x_max = tl.zeros([BLOCK_R], dtype=tl.float32)  # masked columns read as 0: only lowers rows below 0
        for chunk in range(CHUNKS):
            x, _ = _load_chunk(src, chunk * BLOCK_D + cols, row_ok, DIM, False)
            x_max = tl.maximum(x_max, tl.max(x, 1))
        shortcut = (x_max >= GELU_SHORTCUT) | ~row_ok
        amax = tl.where(shortcut, gelu_tanh_tile(x_max), 0.0)
        if tl.min(shortcut.to(tl.int32), 0) == 0:
            full = tl.zeros([BLOCK_R], dtype=tl.float32)
            for chunk in range(CHUNKS):
                x, _ = _load_chunk(src, chunk * BLOCK_D + cols, row_ok, DIM, True)
                full = tl.maximum(full, tl.max(tl.abs(x), 1))
            amax = tl.where(shortcut, amax, full)
    else:
        for chunk in range(CHUNKS):
            x, _ = _load_chunk(src, chunk * BLOCK_D + cols, row_ok, DIM, False)
            amax = tl.maximum(amax, tl.max(tl.abs(x), 1))
    return amax


@triton.jit
def _quantise_rows_kernel(X, Q, SCALE, ROWS, DIM, stride_xr, GELU: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_D: tl.constexpr, CHUNKS: tl.constexpr):
    """Program = ``BLOCK_R`` rows of ``X`` (row stride ``stride_xr``, unit column stride) -> ``Q`` (contiguous
    e4m3) and ``SCALE`` (fp32, one per row), ``BLOCK_D`` columns at a time; with ``CHUNKS`` > 1 the rows are
    read twice, for their maxima (:func:`_chunked_amax`) and then to quantise (the second read from cache);
    ``GELU``: quantise ``gelu_tanh(x)`` computed in fp32."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < ROWS
    src = X + rows.to(tl.int64)[:, None] * stride_xr
    dst = Q + rows.to(tl.int64)[:, None] * DIM
    cols = tl.arange(0, BLOCK_D)
    if CHUNKS == 1:
        x, keep = _load_chunk(src, cols, row_ok, DIM, GELU)
        q, scale = quantise_rows_tile(x)
        tl.store(dst + cols[None, :], q.to(Q.dtype.element_ty), mask=keep)
    else:
        amax = _chunked_amax(src, cols, row_ok, DIM, GELU, BLOCK_R, BLOCK_D, CHUNKS)
        scale, reciprocal = _row_scales(amax)
        for chunk in range(CHUNKS):
            at = chunk * BLOCK_D + cols
            x, keep = _load_chunk(src, at, row_ok, DIM, GELU)
            q = tl.minimum(tl.maximum(x * reciprocal[:, None], -448.0), 448.0)
            tl.store(dst + at[None, :], q.to(Q.dtype.element_ty), mask=keep)
    tl.store(SCALE + rows, scale, mask=row_ok)


def launch_config(dim: int) -> dict[str, int]:
    """The row quantiser's tile for rows of ``dim`` values: ``BLOCK_D`` columns (the row, or chunks of
    :data:`MAX_BLOCK_D`), ``CHUNKS``, ``BLOCK_R`` rows per program and the warps.

    Measured on an H100 over 65280 rows (docs/benchmarks.md, 2026-12-07 evening): the FFN's 8960-wide
    rows with the GELU 0.88 ms at 2 rows x 2048 columns, 8 warps (1.07 with 4 rows; 0.90-1.27 for the
    other seven tiles tried, one 16384-wide read of the row included); the 1536-wide rows 0.127 ms at one
    row per program, 4 warps (0.149 with 4 rows, 8 warps)."""
    block_d = min(triton.next_power_of_2(dim), MAX_BLOCK_D)
    chunks = triton.cdiv(dim, block_d)
    if chunks > 1:
        return {"BLOCK_R": CHUNKED_ROWS_PER_PROGRAM, "BLOCK_D": block_d, "CHUNKS": chunks, "num_warps": 8}
    block_r = max(1, ELEMENTS_PER_PROGRAM // block_d)
    return {"BLOCK_R": block_r, "BLOCK_D": block_d, "CHUNKS": 1, "num_warps": max(4, min(8, block_r * block_d // 1024))}


def gelu_tanh_torch(x: torch.Tensor) -> torch.Tensor:
    """The kernel's GELU (tanh form through a sigmoid) in fp32 PyTorch."""
    xf = x.float()
    inner = GELU_TANH_C * (xf + 0.044715 * xf * xf * xf)
    return 0.5 * xf * (1.0 + (2.0 * torch.sigmoid(2.0 * inner) - 1.0))


def quantise_rows_torch(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (and CPU path): ``(q e4m3 (..., D), scale fp32 (..., 1))`` of the rows of ``x``."""
    xf = gelu_tanh_torch(x) if gelu else x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp_min(AMAX_FLOOR)
    # Tensor by tensor: PyTorch's CUDA division by a Python number multiplies by its reciprocal instead (one
    # rounding more), which put 58% of the scales an ulp off the kernels' and flipped 0.08% of the values.
    full = torch.full_like(amax, E4M3_MAX)
    return (xf * (full / amax)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), amax / full


def quantise_blocks_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q (M, N) e4m3, scales (M, N / BLOCK) fp32 with stride (1, M))``: each row's blocks of :data:`BLOCK`
    columns quantised as :func:`quantise_rows_torch` quantises a row (the 1x128 block scaling cuBLAS reads
    on sm_90, scales block-column-major)."""
    rows, n = x.shape
    q, scale = quantise_rows_torch(x.reshape(rows, n // BLOCK, BLOCK))
    return q.reshape(rows, n), scale.reshape(rows, n // BLOCK).t().contiguous().t()


def dequantise_blocks_torch(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``(M, N)`` values of :func:`quantise_blocks_torch`'s ``(q, scales)``."""
    return (q.float().unflatten(1, (-1, BLOCK)) * scale.float()[:, :, None]).flatten(1)


def quantise_tiles_torch(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q (N, K) e4m3, scales (N / BLOCK, K / BLOCK) fp32)``: each ``BLOCK x BLOCK`` tile of a weight quantised
    with one scale, its largest magnitude over 448 (the 128x128 block scaling cuBLAS reads on sm_90)."""
    n, k = w.shape
    tiles = w.reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK).transpose(1, 2)
    q, scale = quantise_rows_torch(tiles.reshape(n // BLOCK, k // BLOCK, BLOCK * BLOCK))  # a tile as one "row"
    return q.reshape(tiles.shape).transpose(1, 2).reshape(n, k), scale.reshape(n // BLOCK, k // BLOCK)


def quantise_static_torch(x: torch.Tensor, inverse_scale: torch.Tensor) -> torch.Tensor:
    """e4m3 ``clamp(x * inverse_scale, -448, 448)`` with a precomputed inverse scale broadcast over ``x`` (the
    static per-channel scales of the LQ projection's FP8 convs; what :mod:`kernels.time_taps` writes on CUDA)."""
    return (x.float() * inverse_scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantise_rows(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` of the rows of ``x`` ``(..., D)`` in one Triton pass (as :func:`quantise_rows_torch`)."""
    dim = x.shape[-1]
    rows_view = x.reshape(-1, dim)
    if rows_view.stride(-1) != 1:
        rows_view = rows_view.contiguous()
    rows = rows_view.shape[0]
    q = torch.empty((rows, dim), dtype=E4M3, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    config = launch_config(dim)
    grid = (triton.cdiv(rows, config["BLOCK_R"]),)
    _quantise_rows_kernel[grid](rows_view, q, scale, rows, dim, rows_view.stride(0), GELU=gelu, **config, **FP_FUSION)
    return q.view(*x.shape[:-1], dim), scale.view(*x.shape[:-1], 1)
