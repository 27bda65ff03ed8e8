"""Warp-specialised block-sparse attention for Hopper (sm_90), written in Gluon (Triton's low-level dialect).

The Triton kernel (:mod:`kernels.triton_sparse`) is an FA2-style loop in one warpgroup: its two matrix
products, the ``exp2`` work and the accumulator rescale run one after the other. Triton 3.6 cannot
overlap them (docs/attention.md). This kernel is structured as FlashAttention-3 is on Hopper:

- a **load partition** (one warp, 24 registers) TMA-copies the query tile once, then walks the query
  block's kept-block list and copies each tile of kept 64-key K/V blocks (two per tile by default)
  into a ring of shared-memory stages (mbarriers ``ready`` / ``empty`` per stage);
- two **attention partitions** (one warpgroup each, 64 of the 128 query rows each, the rest of the
  registers, scheduled independently) run the online softmax with asynchronous ``wgmma``: the scores
  of tile ``t`` and the P.V product of tile ``t - 1`` are issued together, and the softmax of tile
  ``t`` runs while P.V of ``t - 1`` is still on the tensor cores (FA3's intra-warpgroup overlap).

Same contract as the Triton kernel: one program per (batch, head, 128-row query block) in the launch
``order`` of :func:`kernels.triton_sparse.compact_block_lists`; rows with nothing kept give zeros; the
output has q's memory layout. Q/K/V/O are addressed through 2D TMA descriptors over their own memory
(:func:`rows_view`): no copies. bf16/fp16, head dim 64 or 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kernels.reference import K_BLOCK, Q_BLOCK
from kernels.triton_compat import FP_FUSION, tma_load, tma_store

ARCH = 90  # wgmma exists on sm_90 only (Blackwell has tcgen05 instead)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
SUPPORTED_HEAD_DIMS = (64, 128)
# Launch options: two attention partitions of one warpgroup each (64 query rows each, scheduled
# independently, FlashAttention-3's layout; ``split`` 1 is one partition of two warpgroups), tiles of
# ``pairs`` kept 64-key blocks in ``stages`` shared-memory stages (3 x 2 x 32 KB of K/V + 32 KB of Q fit
# the 227 KB), plus one load warp, rounded up to a warpgroup: 12 warps, and a 168-register cap over
# them leaves the attention warps 240 registers once the load warp drops to 24. Chosen on an H200
# (docs/attention.md: steady 4K 5.28 ms vs 5.53 for single-block tiles, 6.50 for ``split`` 1).
LAUNCH_OPTIONS = {"split": 2, "num_warps": 4, "pairs": 2, "stages": 3, "maxnreg": 168, "attend_registers": 240,
                  "load_registers": 24}


@dataclass(frozen=True)
class RowsView:
    """A ``(B, H, L, D)`` tensor seen as a 2D row-major matrix for TMA: element ``(b, h, l, d)`` is at
    row ``b * per_batch + h * per_head + l``, column ``h * col_per_head + d``."""

    rows: int
    cols: int
    row_stride: int
    per_batch: int
    per_head: int
    col_per_head: int


def rows_view(t: torch.Tensor) -> RowsView | None:
    """The 2D view of ``t`` ``(B, H, L, D)`` over its own memory, or None when its strides allow none.

    Heads are either row groups (``(B, H, L, D)`` memory, e.g. the K/V cache, padding allowed) or
    column groups (``(B, L, H, D)`` memory, e.g. the DiT's queries)."""
    b, h, length, d = t.shape
    sb, sh, sl, sd = t.stride()
    if sd != 1 or sl <= 0 or sb % sl:
        return None
    if sh % sl == 0:
        return RowsView((b - 1) * (sb // sl) + (h - 1) * (sh // sl) + length, d, sl, sb // sl, sh // sl, 0)
    if sh >= d and (h - 1) * sh + d <= sl:
        return RowsView((b - 1) * (sb // sl) + length, (h - 1) * sh + d, sl, sb // sl, 0, sh)
    return None


def _tma_aligned(t: torch.Tensor, view: RowsView) -> bool:
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and (view.row_stride * size) % 16 == 0


def dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its memory without gaps or overlaps (in some order of its dimensions), so
    that ``torch.empty_like(t)`` has the same strides: the output is written with q's 2D view."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


def layouts_fit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether q, k and v have the memory layouts this kernel addresses: TMA-aligned 2D views of all
    three, q dense (the output takes its view), k and v with the same row arithmetic."""
    views = [rows_view(t) for t in (q, k, v)]
    if any(view is None or not _tma_aligned(t, view) for t, view in zip((q, k, v), views)):
        return False
    _, kv, vv = views
    return dense(q) and (kv.per_batch, kv.per_head) == (vv.per_batch, vv.per_head)


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether this kernel can run the call: an sm_90 GPU, bf16/fp16 q/k/v of one dtype, head dim 64
    or 128, and layouts it addresses (:func:`layouts_fit`)."""
    if not q.is_cuda or torch.cuda.get_device_capability(q.device) != (ARCH // 10, ARCH % 10):
        return False
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        return False
    return layouts_fit(q, k, v)


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_bar, ready, empty, idx_row, count, q_row, q_col,
                    kv_row, v_row, STAGES: gl.constexpr, V_T: gl.constexpr):
    """One warp: the query tile once (one box per attention partition), then the kept K/V blocks, one
    tile of ``PAIRS`` blocks per free stage (an odd tail repeats its last block; the scores mask it).
    Values are ``(key, d)`` boxes stacked along the keys, or with ``V_T`` (transposed values, rows
    ``v_row + d``) ``(d, key)`` boxes stacked along d."""
    SPLIT: gl.constexpr = q_bufs.type.shape[0]
    Q_ROWS: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK: gl.constexpr = k_desc.block_type.shape[0]
    V_ROWS: gl.constexpr = v_desc.block_type.shape[0]
    PAIRS: gl.constexpr = k_bufs.type.shape[1] // BLOCK
    mbarrier.expect(q_bar, SPLIT * q_desc.block_type.nbytes, pred=count > 0)
    for i in gl.static_range(SPLIT):
        tma_load(q_desc, [q_row + i * Q_ROWS, q_col], q_bar, q_bufs.index(i), pred=count > 0)
    for t in range(gl.cdiv(count, PAIRS)):
        stage = t % STAGES
        # A fresh barrier counts as "phase 1 complete": the first pass over the ring does not wait.
        mbarrier.wait(empty.index(stage), ((t // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), PAIRS * (k_desc.block_type.nbytes + v_desc.block_type.nbytes))
        for i in gl.static_range(PAIRS):
            key = gl.load(idx_row + gl.minimum(t * PAIRS + i, count - 1)) * BLOCK
            tma_load(k_desc, [kv_row + key, 0], ready.index(stage), k_bufs.index(stage).slice(i * BLOCK, BLOCK))
            v_smem = v_bufs.index(stage).slice(i * V_ROWS, V_ROWS)
            if V_T:
                tma_load(v_desc, [v_row, key], ready.index(stage), v_smem)
            else:
                tma_load(v_desc, [v_row + key, 0], ready.index(stage), v_smem)


@gluon.jit
def _masked_tail(s, t, tiles, count, PAIRS: gl.constexpr, layout: gl.constexpr):
    """Scores of tile ``t`` with the columns past the last kept block at -inf (only the last tile of an
    odd count holds such columns)."""
    if PAIRS > 1:
        if t == tiles - 1:
            cols = gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, layout))
            valid = (count - t * PAIRS) * (s.shape[1] // PAIRS)
            s = gl.where(cols[None, :] < valid, s, float("-inf"))
    return s


@gluon.jit
def _attend_partition(q_smem, k_bufs, v_bufs, q_bar, ready, empty, o_desc, count, q_row, q_col, qk_scale,
                      STAGES: gl.constexpr, WARPS: gl.constexpr):
    """``WARPS`` warps (16 query rows each): online softmax over the kept tiles with overlapped
    asynchronous wgmma; writes the normalised output rows (zeros when nothing is kept) through TMA."""
    BLOCK_M: gl.constexpr = q_smem.type.shape[0]
    HEAD_DIM: gl.constexpr = q_smem.type.shape[1]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    PAIRS: gl.constexpr = BLOCK_N // 64
    tiles = gl.cdiv(count, PAIRS)

    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
    if count > 0:
        s_init = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
        mbarrier.wait(q_bar, 0)
        mbarrier.wait(ready.index(0), 0)
        s = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), s_init, use_acc=False)
        s = _masked_tail(s, 0, tiles, count, PAIRS, s_layout)
        m_i = gl.max(s, axis=1) * qk_scale
        p = gl.exp2(s * qk_scale - m_i[:, None])
        l_i = gl.sum(p, axis=1)
        p_prev = gl.convert_layout(p.to(dtype), p_layout)
        for t in range(1, tiles):
            stage = t % STAGES
            prev = (t - 1) % STAGES
            mbarrier.wait(ready.index(stage), (t // STAGES) & 1)
            s = warpgroup_mma(q_smem, k_bufs.index(stage).permute((1, 0)), s_init, use_acc=False, is_async=True)
            acc = warpgroup_mma(p_prev, v_bufs.index(prev), acc, is_async=True)
            s = warpgroup_mma_wait(1, deps=(s, ))  # the scores are done; P.V of tile t - 1 may still run
            s = _masked_tail(s, t, tiles, count, PAIRS, s_layout)
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
            p = gl.exp2(s * qk_scale - m_new[:, None])
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            acc, p_prev = warpgroup_mma_wait(0, deps=(acc, p_prev))
            mbarrier.arrive(empty.index(prev))
            acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
            p_prev = gl.convert_layout(p.to(dtype), p_layout)
        last = (tiles - 1) % STAGES
        acc = warpgroup_mma(p_prev, v_bufs.index(last), acc)
        mbarrier.arrive(empty.index(last))
    l_safe = gl.where(l_i == 0.0, 1.0, l_i)
    out = acc / gl.convert_layout(l_safe, o_rows)[:, None]
    q_smem.store(out.to(dtype))  # the query rows are no longer read: their buffer stages the output
    fence_async_shared()
    tma_store(o_desc, [q_row, q_col], q_smem)
    tma.store_wait(0)


@gluon.jit
def _query_block(ORDER, CNT, IDX, H, NQ, NK, Q_PER_BATCH, Q_PER_HEAD, Q_COL_PER_HEAD):
    """This program's query block (``ORDER[program]`` = (b * H + h) * NQ + query block): its batch, head,
    kept-block count and list, and its first row and column in q's 2D view."""
    row = gl.load(ORDER + gl.program_id(0))
    bh = row // NQ
    b = bh // H
    h = bh % H
    q_row = b * Q_PER_BATCH + h * Q_PER_HEAD + (row % NQ) * 128
    return b, h, gl.load(CNT + row), IDX + row.to(gl.int64) * NK, q_row, h * Q_COL_PER_HEAD


@gluon.jit
def _stage_barriers(STAGES: gl.constexpr, PARTITIONS: gl.constexpr):
    """The query tile's barrier and each stage's ``ready`` (the load warp's copies landed) and ``empty``
    (every one of the ``PARTITIONS`` attention partitions released it) barriers, initialised."""
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=PARTITIONS)
    return q_bar, ready, empty


@gluon.jit
def _sparse_attn_ws_kernel(q_desc, k_desc, v_desc, o_desc, IDX, CNT, ORDER, qk_scale,
                           H, NQ, NK, Q_PER_BATCH, Q_PER_HEAD, Q_COL_PER_HEAD, KV_PER_BATCH, KV_PER_HEAD,
                           SPLIT: gl.constexpr, PAIRS: gl.constexpr, STAGES: gl.constexpr,
                           ATTEND_REGISTERS: gl.constexpr,
                           LOAD_REGISTERS: gl.constexpr, num_warps: gl.constexpr):
    """One program = one 128-row query block (``ORDER[program]`` = (b * H + h) * NQ + query block),
    its rows split over ``SPLIT`` attention partitions of ``num_warps`` warps each."""
    Q_ROWS: gl.constexpr = q_desc.block_type.shape[0]
    gl.static_assert(Q_ROWS * SPLIT == 128, "the query box covers 128 // SPLIT rows")
    b, h, count, idx_row, q_row, q_col = _query_block(ORDER, CNT, IDX, H, NQ, NK, Q_PER_BATCH, Q_PER_HEAD,
                                                      Q_COL_PER_HEAD)
    kv_row = b * KV_PER_BATCH + h * KV_PER_HEAD

    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [SPLIT] + q_desc.block_type.shape, q_desc.layout)
    BLOCK: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = k_desc.block_type.shape[1]
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, PAIRS * BLOCK, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES, PAIRS * BLOCK, HEAD_DIM], v_desc.layout)
    q_bar, ready, empty = _stage_barriers(STAGES, SPLIT)

    V_T: gl.constexpr = False  # values in (key, d) rows
    load_args = (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_bar, ready, empty, idx_row, count, q_row, q_col,
                 kv_row, kv_row, STAGES, V_T)
    if SPLIT == 1:
        gl.warp_specialize([
            (_attend_partition, (q_bufs.index(0), k_bufs, v_bufs, q_bar, ready, empty, o_desc, count, q_row, q_col,
                                 qk_scale, STAGES, num_warps)),
            (_load_partition, load_args),
        ], [1], [LOAD_REGISTERS])
    else:
        gl.warp_specialize([
            (_attend_partition, (q_bufs.index(0), k_bufs, v_bufs, q_bar, ready, empty, o_desc, count, q_row, q_col,
                                 qk_scale, STAGES, num_warps)),
            (_attend_partition, (q_bufs.index(1), k_bufs, v_bufs, q_bar, ready, empty, o_desc, count, q_row + Q_ROWS,
                                 q_col, qk_scale, STAGES, num_warps)),
            (_load_partition, load_args),
        ], [num_warps, 1], [ATTEND_REGISTERS, LOAD_REGISTERS])


def descriptor(t: torch.Tensor, view: RowsView, box: list[int]) -> TensorDescriptor:
    """A TMA descriptor of ``box`` (rows, columns) tiles over ``t``'s 2D view, with the default swizzled
    shared-memory layout for that box (bf16, fp16 or e4m3)."""
    dtype = gl.float8e4nv if t.dtype == torch.float8_e4m3fn else getattr(gl, str(t.dtype).removeprefix("torch."))
    layout = gl.NVMMASharedLayout.get_default_for(box, dtype)
    return TensorDescriptor(t, [view.rows, view.cols], [view.row_stride, 1], box, layout)


def sparse_attention_gluon(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, cnt: torch.Tensor,
                           order: torch.Tensor, *, scale: float | None = None, options: dict | None = None
                           ) -> torch.Tensor:
    """Attention over the compacted kept-block lists (``idx``, ``cnt``, ``order`` of
    :func:`kernels.triton_sparse.compact_block_lists`); the output has q's dtype and memory layout.
    ``options`` overrides keys of :data:`LAUNCH_OPTIONS` (benchmark sweeps). The caller checks
    :func:`supported` first."""
    b, h, lq, d = q.shape
    nq, nk = lq // Q_BLOCK, k.shape[2] // K_BLOCK
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    qv, kv, vv, ov = rows_view(q), rows_view(k), rows_view(v), rows_view(out)
    assert qv is not None and kv is not None and vv is not None and ov == qv, "call supported() first"
    assert kv.per_batch == vv.per_batch and kv.per_head == vv.per_head, "k and v need the same layout"
    opts = {**LAUNCH_OPTIONS, **(options or {})}
    q_rows = Q_BLOCK // opts["split"]
    _sparse_attn_ws_kernel[(b * h * nq,)](
        descriptor(q, qv, [q_rows, d]), descriptor(k, kv, [K_BLOCK, d]), descriptor(v, vv, [K_BLOCK, d]),
        descriptor(out, ov, [q_rows, d]), idx, cnt, order, scale * math.log2(math.e),
        h, nq, nk, qv.per_batch, qv.per_head, qv.col_per_head, kv.per_batch, kv.per_head,
        SPLIT=opts["split"], PAIRS=opts["pairs"], STAGES=opts["stages"], ATTEND_REGISTERS=opts["attend_registers"],
        LOAD_REGISTERS=opts["load_registers"], num_warps=opts["num_warps"], maxnreg=opts["maxnreg"],
        **FP_FUSION)
    return out
