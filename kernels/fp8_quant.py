"""Per-row e4m3 quantisation for FP8 matrix products (``torch._scaled_mm`` with rowwise scales).

A row ``v`` (one token's activations, or one output channel of a weight) becomes
``q = round_e4m3(clamp(v / s, -448, 448))`` with ``s = max(amax(|v|), 1e-12) / 448`` in fp32, so
``v ~= q * s`` and the row's largest value lands on e4m3's largest finite value. The division is the
IEEE one (``div.rn``) on both paths, so the Triton kernels and :func:`quantise_rows_torch` agree bit for
bit. :func:`quantise_rows_tile` is the ``@triton.jit`` helper the producing kernels call in their
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
GELU_TANH_C = 0.7978845608028654  # sqrt(2 / pi)


@triton.jit
def quantise_rows_tile(y):
    """``(q, scale)`` of an fp32 ``(R, D)`` tile whose masked-off entries are 0: ``q`` fp32 values on the
    e4m3 grid's range (cast them to e4m3 to store), ``scale`` ``(R,)`` fp32."""
    amax = tl.max(tl.abs(y), 1)
    scale = tl.math.div_rn(tl.maximum(amax, 1e-12), tl.full(amax.shape, 448.0, tl.float32))
    q = tl.math.div_rn(y, scale[:, None])
    return tl.minimum(tl.maximum(q, -448.0), 448.0), scale


@triton.jit
def _quantise_rows_kernel(X, Q, SCALE, ROWS, DIM, stride_xr, GELU: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = one row of ``X`` (row stride ``stride_xr``, unit column stride) -> ``Q`` (contiguous
    e4m3) and ``SCALE`` (fp32, one per row); ``GELU``: quantise ``gelu_tanh(x)`` computed in fp32."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    keep = cols < DIM
    x = tl.load(X + row * stride_xr + cols, mask=keep, other=0.0).to(tl.float32)
    if GELU:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))  # tanh(z) = 2 sigmoid(2z) - 1
    q, scale = quantise_rows_tile(x[None, :])
    tl.store(Q + row * DIM + cols[None, :], q.to(Q.dtype.element_ty), mask=keep[None, :])
    tl.store(SCALE + row + tl.arange(0, 1), scale)


def gelu_tanh_torch(x: torch.Tensor) -> torch.Tensor:
    """The kernel's GELU (tanh form through a sigmoid) in fp32 PyTorch."""
    xf = x.float()
    inner = GELU_TANH_C * (xf + 0.044715 * xf * xf * xf)
    return 0.5 * xf * (1.0 + (2.0 * torch.sigmoid(2.0 * inner) - 1.0))


def quantise_rows_torch(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (and CPU path): ``(q e4m3 (..., D), scale fp32 (..., 1))`` of the rows of ``x``."""
    xf = gelu_tanh_torch(x) if gelu else x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(AMAX_FLOOR) / E4M3_MAX
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def quantise_rows(x: torch.Tensor, *, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` of the rows of ``x`` ``(..., D)`` in one Triton pass (as :func:`quantise_rows_torch`)."""
    dim = x.shape[-1]
    rows_view = x.reshape(-1, dim)
    if rows_view.stride(-1) != 1:
        rows_view = rows_view.contiguous()
    rows = rows_view.shape[0]
    q = torch.empty((rows, dim), dtype=E4M3, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    block_d = triton.next_power_of_2(dim)
    _quantise_rows_kernel[(rows,)](rows_view, q, scale, rows, dim, rows_view.stride(0), GELU=gelu, BLOCK_D=block_d,
                                   num_warps=min(16, max(4, block_d // 1024)), **FP_FUSION)
    return q.view(*x.shape[:-1], dim), scale.view(*x.shape[:-1], 1)
