"""The DiT block's layer norms, each with the residual add before it, in one pass over the rows.

A Wan block runs ``x = x + gate * attn``, ``norm3(x)`` (affine), ``x = x + cross``,
``norm2(x) * scale + shift`` (modulated) and ``norm1(x) * scale + shift`` at the start: each an
element-wise pass over the ``(L, 1536)`` activations, the norms compiled by ``torch.compile`` or run by
ATen. Here one program holds ``BLOCK_R`` rows in registers: it optionally adds the (gated) update and
writes the new residual stream, then normalises and writes the norm's output, so the residual is read
once instead of twice. Roundings follow the eager expressions: ``x + gate * update`` rounds the
product and the sum to the input dtype; the modulated norm rounds the normalised row, the product with
``scale`` and the sum with ``shift``; the affine norm (``nn.LayerNorm`` with weight and bias) rounds
once, after one fused multiply-add, as ATen's kernel does. The kernel is compiled without
floating-point contraction: with it, LLVM turns each rounded product and the add after it into one
``fma.rn.bf16``, which skips the product's rounding (28% of the outputs one bf16 step off on an H200).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fp8_quant import E4M3, quantise_rows_tile

ROWS_PER_PROGRAM = 2
# How the kernel is launched (and compile-checked in tests/kernels/gpu_compile.py): no floating-point
# contraction, so the rounded products of the eager expressions stay rounded.
LAUNCH_OPTIONS = {"num_warps": 4, "enable_fp_fusion": False}


@triton.jit
def _add_layer_norm_rows(
    X, UPDATE, GATE, SCALE, SHIFT, X_OUT, ROWS, DIM, eps,
    HAS_UPDATE: tl.constexpr, HAS_GATE: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The body both kernels share: adds the update (storing the new residual rows) and returns
    ``(y, rows, offsets, keep)``, ``y`` the norm's output in fp32 (before its final rounding)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < DIM
    keep = (rows < ROWS)[:, None] & col_ok[None, :]
    offsets = rows[:, None] * DIM + cols[None, :]
    x = tl.load(X + offsets, mask=keep, other=0.0)
    if HAS_UPDATE:
        update = tl.load(UPDATE + offsets, mask=keep, other=0.0)
        if HAS_GATE:
            gate = tl.load(GATE + cols, mask=col_ok, other=0.0)
            update = (gate[None, :].to(tl.float32) * update.to(tl.float32)).to(x.dtype)
        x = (x.to(tl.float32) + update.to(tl.float32)).to(x.dtype)
        tl.store(X_OUT + offsets, x, mask=keep)
    xf = x.to(tl.float32)
    mean = tl.sum(xf, 1) / DIM
    centred = tl.where(keep, xf - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(centred * centred, 1) / DIM + eps)
    normed = centred * rstd[:, None]
    scale = tl.load(SCALE + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    shift = tl.load(SHIFT + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if AFFINE:
        y = tl.fma(normed, scale, shift)
    else:
        scaled = (normed.to(x.dtype).to(tl.float32) * scale).to(x.dtype)
        y = scaled.to(tl.float32) + shift
    return y, rows, offsets, keep


@triton.jit
def _add_layer_norm_kernel(
    X, UPDATE, GATE, SCALE, SHIFT, X_OUT, Y, ROWS, DIM, eps,
    HAS_UPDATE: tl.constexpr, HAS_GATE: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program = ``BLOCK_R`` rows of the contiguous ``(ROWS, DIM)`` tensors; ``GATE``/``SCALE``/``SHIFT``
    are ``(DIM,)`` vectors."""
    y, rows, offsets, keep = _add_layer_norm_rows(X, UPDATE, GATE, SCALE, SHIFT, X_OUT, ROWS, DIM, eps, HAS_UPDATE,
                                                  HAS_GATE, AFFINE, BLOCK_R, BLOCK_D)
    tl.store(Y + offsets, y.to(X.dtype.element_ty), mask=keep)


@triton.jit
def _add_layer_norm_fp8_kernel(
    X, UPDATE, GATE, SCALE, SHIFT, X_OUT, Y, Y_SCALE, ROWS, DIM, eps,
    HAS_UPDATE: tl.constexpr, HAS_GATE: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """:func:`_add_layer_norm_kernel` whose norm output goes straight to an FP8 matrix product: the row,
    rounded to the input dtype as the bf16 kernel writes it, is quantised per row to e4m3 ``Y`` with
    fp32 ``Y_SCALE`` (one per row, :func:`kernels.fp8_quant.quantise_rows_tile`)."""
    y, rows, offsets, keep = _add_layer_norm_rows(X, UPDATE, GATE, SCALE, SHIFT, X_OUT, ROWS, DIM, eps, HAS_UPDATE,
                                                  HAS_GATE, AFFINE, BLOCK_R, BLOCK_D)
    rounded = tl.where(keep, y.to(X.dtype.element_ty).to(tl.float32), 0.0)
    q, row_scale = quantise_rows_tile(rounded)
    tl.store(Y + offsets, q.to(Y.dtype.element_ty), mask=keep)
    tl.store(Y_SCALE + rows, row_scale, mask=rows < ROWS)


def _rows(t: torch.Tensor) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError("the fused layer norm needs contiguous (..., dim) activations")
    return t


def _vector(v: torch.Tensor, dim: int) -> torch.Tensor:
    if v.numel() != dim or not v.is_contiguous():
        raise ValueError(f"expected a contiguous vector of {dim} values, got {tuple(v.shape)}")
    return v


def add_layer_norm(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
    *,
    update: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    affine: bool = False,
    fp8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """``(x', y)``: ``x' = x + gate * update`` (``x + update`` without a gate; ``x`` itself without an
    update) and the layer norm of ``x'`` over the last dim, ``* scale + shift`` (``affine``: an
    ``nn.LayerNorm``'s weight and bias, rounded once; else the timestep modulation, rounded as the
    eager ``F.layer_norm(x) * scale + shift``). ``x`` and ``update`` contiguous ``(..., dim)``;
    ``gate``, ``scale``, ``shift`` hold ``dim`` values (e.g. ``(1, 1, dim)``). ``fp8``: ``y`` is
    ``(q, row_scale)``, the norm's output quantised per row to e4m3 ``(..., dim)`` with fp32 scales
    ``(..., 1)``, for an FP8 matrix product (as :func:`kernels.fp8_quant.quantise_rows` of the bf16 ``y``)."""
    dim = x.shape[-1]
    x = _rows(x)
    if update is not None and (update.shape != x.shape or update.dtype != x.dtype):
        raise ValueError(f"update {update.dtype} {tuple(update.shape)} does not match x {x.dtype} {tuple(x.shape)}")
    if gate is not None and update is None:
        raise ValueError("a gate needs an update")
    scale, shift = _vector(scale, dim), _vector(shift, dim)
    x_out = torch.empty_like(x) if update is not None else x
    rows = x.numel() // dim
    args = (x, _rows(update) if update is not None else x, _vector(gate, dim) if gate is not None else scale,
            scale, shift, x_out)
    meta = dict(HAS_UPDATE=update is not None, HAS_GATE=gate is not None, AFFINE=affine, BLOCK_R=ROWS_PER_PROGRAM,
                BLOCK_D=triton.next_power_of_2(dim), **LAUNCH_OPTIONS)
    grid = (triton.cdiv(rows, ROWS_PER_PROGRAM),)
    if fp8:
        q = torch.empty(x.shape, dtype=E4M3, device=x.device)
        row_scale = torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
        _add_layer_norm_fp8_kernel[grid](*args, q, row_scale, rows, dim, eps, **meta)
        return x_out, (q, row_scale)
    y = torch.empty_like(x)
    _add_layer_norm_kernel[grid](*args, y, rows, dim, eps, **meta)
    return x_out, y
