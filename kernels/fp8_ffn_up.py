"""The FFN's up projection as one FP8 product whose epilogue writes the down projection's e4m3 input.

``gelu_tanh(a @ w^T * a_scale * w_scale + bias)``, quantised in blocks of one row by 128 columns
(:data:`kernels.fp8_quant.BLOCK`), each block with its own fp32 scale (its largest magnitude over 448, as
:func:`kernels.fp8_quant.quantise_rows_tile` does for a whole row). A row's scale would need all its 8960
columns, which span 70 output tiles; a block's needs only its own tile, so the product, the bias, the GELU and
the quantisation are one kernel and the 8960-wide hidden activations are written once, in e4m3, instead of
written in bf16 and read again by a quantising pass. The down projection then multiplies with those block
scales (``torch._scaled_mm``'s 1x128 block scaling on sm_90, :mod:`upscaler.models.fp8`).

Inputs: ``a (M, K)`` e4m3 with one fp32 scale per row (the layer norm's e4m3 output), ``w (N, K)`` e4m3 with
one fp32 scale per output channel, a bias ``(N,)``. Outputs: ``q (M, N)`` e4m3 and the block scales
``(M, N / 128)`` fp32 laid out block-column-major (stride ``(1, M)``), the layout cuBLAS reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.fp8_quant import BLOCK, E4M3, gelu_tanh_tile, gelu_tanh_torch, quantise_blocks_torch, quantise_rows_tile
from kernels.tile_order import grouped_tile
from kernels.triton_compat import FP_FUSION


@dataclass(frozen=True)
class GemmTile:
    """One program's rows and reduction step (its columns are one block of 128), and launch options;
    ``group_m`` row tiles that read the same weight tiles run together (L2 reuse). ``programs_per_sm`` 0
    launches one program per output tile; n > 0 a persistent grid of n programs per SM, each looping over
    tiles in one flattened loop, so the next tile's loads can be in flight during this one's epilogue (the
    reduction is only 12 steps of 128 here, the GELU and quantisation epilogue long). Not yet measured on
    a GPU: the default is the LQ projection's FP8 conv tile (:class:`kernels.fp8_conv.ConvTile`) with half
    its rows, since each program's reduction here (the 1536 model dim) is 48x shorter."""

    block_m: int = 128
    block_k: int = 128
    group_m: int = 8
    warps: int = 8
    stages: int = 4
    programs_per_sm: int = 0


DEFAULT_TILE = GemmTile()
INTERPRETER_SMS = 4  # the persistent grid's "SMs" when the Triton interpreter runs the kernel on CPU tensors


@triton.jit
def _output_tile(a_desc, w_desc, A_SCALE, W_SCALE, BIAS, Q, Q_SCALE, M, N, K, tile,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Output tile ``tile``: ``BLOCK_M`` rows x one block of ``BLOCK_N`` columns (``N`` is a multiple of it),
    the product over ``K``, then scales, bias, GELU and the block's e4m3 quantisation in fp32."""
    row_tile, col_tile = grouped_tile(tile, tl.cdiv(M, BLOCK_M), N // BLOCK_N, GROUP_M)
    m0 = row_tile * BLOCK_M
    n0 = col_tile * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = a_desc.load([m0, k])
        w = w_desc.load([n0, k])
        acc = tl.dot(a, w.T, acc)
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = n0 + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    a_scale = tl.load(A_SCALE + rows, mask=row_ok, other=0.0)
    h = acc * a_scale[:, None] * tl.load(W_SCALE + cols)[None, :] + tl.load(BIAS + cols).to(tl.float32)[None, :]
    q, scale = quantise_rows_tile(gelu_tanh_tile(h))
    tl.store(Q + rows.to(tl.int64)[:, None] * N + cols[None, :], q.to(Q.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Q_SCALE + col_tile.to(tl.int64) * M + rows, scale, mask=row_ok)


@triton.jit
def _up_gelu_quantise_kernel(
    a_desc, w_desc, A_SCALE, W_SCALE, BIAS, Q, Q_SCALE, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr,
):
    """One output tile per program, or (``PERSISTENT``) every ``num_programs``-th tile from this program's."""
    if PERSISTENT:
        tiles = tl.cdiv(M, BLOCK_M) * (N // BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=True):
            _output_tile(a_desc, w_desc, A_SCALE, W_SCALE, BIAS, Q, Q_SCALE, M, N, K, tile,
                         BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        _output_tile(a_desc, w_desc, A_SCALE, W_SCALE, BIAS, Q, Q_SCALE, M, N, K, tl.program_id(0),
                     BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)


def supported(a: torch.Tensor, weight: torch.Tensor, tile: GemmTile = DEFAULT_TILE) -> bool:
    """Whether the kernel takes these operands: contiguous e4m3 ``a (M, K)`` and ``weight (N, K)`` with ``K`` a
    multiple of the tile's ``block_k`` and ``N`` a multiple of :data:`BLOCK` (the down projection's blocks)."""
    return (a.dim() == 2 and weight.dim() == 2 and a.dtype == E4M3 and weight.dtype == E4M3
            and a.shape[1] == weight.shape[1] and a.shape[1] % tile.block_k == 0 and weight.shape[0] % BLOCK == 0
            and a.is_contiguous() and weight.is_contiguous())


def up_gelu_quantise(a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     bias: torch.Tensor, tile: GemmTile = DEFAULT_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q (M, N) e4m3, block scales (M, N / BLOCK) fp32, stride (1, M))`` of ``gelu_tanh(a @ weight^T *
    a_scale * weight_scale + bias)``; ``a_scale`` has ``M`` values, ``weight_scale`` and ``bias`` ``N``."""
    if not supported(a, weight, tile):
        raise ValueError(f"up_gelu_quantise takes contiguous e4m3 a (M, K) and weight (N, K) with K a multiple of "
                         f"{tile.block_k} and N of {BLOCK}; got {a.dtype} {tuple(a.shape)}, "
                         f"{weight.dtype} {tuple(weight.shape)}")
    rows, k = a.shape
    n = weight.shape[0]
    a_desc = TensorDescriptor.from_tensor(a, [tile.block_m, tile.block_k])
    w_desc = TensorDescriptor.from_tensor(weight, [BLOCK, tile.block_k])
    q = torch.empty((rows, n), dtype=E4M3, device=a.device)
    q_scale = torch.empty((n // BLOCK, rows), dtype=torch.float32, device=a.device)
    programs = triton.cdiv(rows, tile.block_m) * (n // BLOCK)  # one per output tile
    if tile.programs_per_sm:
        sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else INTERPRETER_SMS
        programs = min(programs, sms * tile.programs_per_sm)
    _up_gelu_quantise_kernel[(programs,)](
        a_desc, w_desc, a_scale.reshape(-1), weight_scale.reshape(-1), bias, q, q_scale, rows, n, k,
        BLOCK_M=tile.block_m, BLOCK_N=BLOCK, BLOCK_K=tile.block_k, GROUP_M=tile.group_m,
        PERSISTENT=tile.programs_per_sm > 0, num_warps=tile.warps, num_stages=tile.stages, **FP_FUSION,
    )
    return q, q_scale.t()


def up_gelu_quantise_torch(a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor,
                           weight_scale: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (and CPU path) of :func:`up_gelu_quantise`: the product in fp32, then the same scales,
    bias, GELU and block quantisation."""
    h = (a.float() @ weight.float().t()) * a_scale.reshape(-1, 1).float() * weight_scale.reshape(1, -1).float()
    return quantise_blocks_torch(gelu_tanh_torch(h + bias.float()))

