"""FP8 block-sparse attention for Hopper (sm_90): the warp-specialised kernel of :mod:`kernels.gluon_sparse`
with both products in FP8 (e4m3), over the FP8 streaming cache as it is stored (no dequantised copy).

- **keys**: e4m3 ``(B, H, L, D)``, one float32 scale per (time slice, head) (:class:`FP8KeysValues`);
- **values**: e4m3 stored *transposed*, ``(B, H, D, L)``: an FP8 ``wgmma`` reads both operands with the
  reduction dimension contiguous, and P.V reduces over the keys. FlashAttention-3 transposes V in shared
  memory for this; the cache writes each slice transposed once instead (one slice per streaming step);
- **queries**: bf16/fp16 as the DiT gives them; each attention partition quantises its 64 rows to e4m3
  by their absolute maxima once, before the first tile;
- **scores**: two 64-key products per tile (one per kept block, each with its own key scale), the
  row scale x key scale x softmax scale folded into one factor per row and half-tile (one FMA per score
  before ``exp2``, as in the bf16 kernel);
- **probabilities**: P is multiplied by ``P_RANGE`` x (the block's value scale / the head's largest value
  scale) before its conversion to e4m3, so the value scales ride in P and P uses e4m3's range instead
  of [0, 1]; the output divides once at the end. P waits for its product in shared memory, not in
  registers (:func:`_stage_probabilities`).

The load partition, the query-block launch order, the stage ring and the output store are the bf16
kernel's. One layout: two attention partitions of one warpgroup, tiles of two kept 64-key blocks.
"""

from __future__ import annotations

import math

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

from kernels.gluon_sparse import (
    ARCH,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    _load_partition,
    _query_block,
    _stage_barriers,
    _tma_aligned,
    dense,
    descriptor,
    rows_view,
)
from kernels.reference import K_BLOCK, Q_BLOCK, FP8KeysValues
from kernels.triton_compat import FP_FUSION, tma_store

# 4 stages of (2 x 64 keys x 128) e4m3 K plus as much V^T (16 + 16 KB each), the 32 KB query tile and 16 KB of
# P fit the 227 KB with room (197 KB at D 128); register split as the bf16 kernel's.
LAUNCH_OPTIONS = {"num_warps": 4, "stages": 4, "maxnreg": 168, "attend_registers": 240, "load_registers": 24}
P_RANGE = gl.constexpr(256.0)  # the largest scaled probability: e4m3 holds up to 448
E4M3_MAX = gl.constexpr(448.0)


def supported(q: torch.Tensor, kv: FP8KeysValues) -> bool:
    """Whether this kernel can run the call: an sm_90 GPU, bf16/fp16 queries, head dim 64 or 128, and
    TMA-aligned views of q, the keys and the values (:class:`FP8KeysValues` checked their e4m3 dtypes)."""
    if not q.is_cuda or torch.cuda.get_device_capability(q.device) != (ARCH // 10, ARCH % 10):
        return False
    if q.dtype not in SUPPORTED_DTYPES or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return False
    views = [rows_view(t) for t in (q, kv.keys, kv.values_t)]
    if any(view is None or not _tma_aligned(t, view) for t, view in zip((q, kv.keys, kv.values_t), views)):
        return False
    return dense(q) and views[1].per_head > 0 and views[2].per_head > 0


@gluon.jit
def _half_scales(KS, VS, idx_row, slot, count, h, H, SLICE_BLOCKS, v_ratio):
    """Scale of the keys and factor of the probabilities of the kept block in ``slot`` of the list (the
    last block again past the end)."""
    block = gl.load(idx_row + gl.minimum(slot, count - 1))
    scale_at = (block // SLICE_BLOCKS) * H + h
    return gl.load(KS + scale_at), gl.load(VS + scale_at) * v_ratio


@gluon.jit
def _scores_to_probabilities(s0, s1, m_i, row_factor, k0, k1, second_valid):
    """Online-softmax step over the two halves of a tile: their scaled scores' new running max (log2
    units) and their probabilities (the second half zero where it repeats the last kept block)."""
    if not second_valid:
        s1 = gl.full(s1.shape, float("-inf"), gl.float32, s1.type.layout)
    c0 = row_factor * k0
    c1 = row_factor * k1
    m_new = gl.maximum(m_i, gl.maximum(gl.max(s0, axis=1) * c0, gl.max(s1, axis=1) * c1))
    p0 = gl.exp2(s0 * c0[:, None] - m_new[:, None])
    p1 = gl.exp2(s1 * c1[:, None] - m_new[:, None])
    return m_new, p0, p1


@gluon.jit
def _stage_probabilities(p_smem, p0, p1, v0, v1):
    """Both halves' probabilities, times their blocks' value factors, as e4m3 in shared memory: the A
    operands of the next P.V (an FP8 operand cannot wait in registers: Triton's wgmma wait keeps only
    16- and 32-bit values alive)."""
    p_smem.index(0).store((p0 * v0).to(p_smem.dtype))
    p_smem.index(1).store((p1 * v1).to(p_smem.dtype))
    fence_async_shared()


@gluon.jit
def _attend_partition_fp8(q_smem, p_smem, k_bufs, v_bufs, q_bar, ready, empty, o_desc, idx_row, count, q_row, q_col, qk_scale,
                          KS, VS, h, H, SLICE_BLOCKS, v_ratio, out_factor, STAGES: gl.constexpr, WARPS: gl.constexpr):
    """``WARPS`` warps (16 query rows each): the bf16 kernel's overlapped online softmax, with Q.K^T and
    P.V as FP8 ``wgmma`` (two 64-key halves per tile); writes the normalised rows through TMA."""
    BLOCK_M: gl.constexpr = q_smem.type.shape[0]
    HEAD_DIM: gl.constexpr = q_smem.type.shape[1]
    BLOCK: gl.constexpr = k_bufs.type.shape[1] // 2
    dtype: gl.constexpr = q_smem.dtype
    fp8: gl.constexpr = k_bufs.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, BLOCK, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, HEAD_DIM, 32])
    q_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=4)
    load_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
    rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    tiles = gl.cdiv(count, 2)

    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, rows)
    if count > 0:
        mbarrier.wait(q_bar, 0)
        q = q_smem.load(load_layout).to(gl.float32)
        q_scale = gl.maximum(gl.max(gl.abs(q), axis=1), 1e-12) / E4M3_MAX
        q8 = gl.convert_layout((q / q_scale[:, None]).to(fp8), q_layout)
        row_factor = gl.convert_layout(q_scale, rows) * qk_scale
        s_init = gl.zeros([BLOCK_M, BLOCK], gl.float32, s_layout)
        k0, v0 = _half_scales(KS, VS, idx_row, 0, count, h, H, SLICE_BLOCKS, v_ratio)
        k1, v1 = _half_scales(KS, VS, idx_row, 1, count, h, H, SLICE_BLOCKS, v_ratio)
        mbarrier.wait(ready.index(0), 0)
        keys = k_bufs.index(0)
        s0 = warpgroup_mma(q8, keys.slice(0, BLOCK).permute((1, 0)), s_init, use_acc=False)
        s1 = warpgroup_mma(q8, keys.slice(BLOCK, BLOCK).permute((1, 0)), s_init, use_acc=False)
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows)
        m_i, p0, p1 = _scores_to_probabilities(s0, s1, m_i, row_factor, k0, k1, count > 1)
        l_i = gl.sum(p0, axis=1) + gl.sum(p1, axis=1)
        _stage_probabilities(p_smem, p0, p1, v0, v1)
        for t in range(1, tiles):
            stage = t % STAGES
            prev = (t - 1) % STAGES
            k0, v0 = _half_scales(KS, VS, idx_row, 2 * t, count, h, H, SLICE_BLOCKS, v_ratio)
            k1, v1 = _half_scales(KS, VS, idx_row, 2 * t + 1, count, h, H, SLICE_BLOCKS, v_ratio)
            mbarrier.wait(ready.index(stage), (t // STAGES) & 1)
            keys = k_bufs.index(stage)
            values = v_bufs.index(prev)
            s0 = warpgroup_mma(q8, keys.slice(0, BLOCK).permute((1, 0)), s_init, use_acc=False, is_async=True)
            s1 = warpgroup_mma(q8, keys.slice(BLOCK, BLOCK).permute((1, 0)), s_init, use_acc=False, is_async=True)
            acc = warpgroup_mma(p_smem.index(0), values.slice(0, HEAD_DIM).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma(p_smem.index(1), values.slice(HEAD_DIM, HEAD_DIM).permute((1, 0)), acc, is_async=True)
            s0, s1 = warpgroup_mma_wait(2, deps=(s0, s1))  # the scores are done; P.V of tile t - 1 may still run
            m_new, p0, p1 = _scores_to_probabilities(s0, s1, m_i, row_factor, k0, k1, 2 * t + 1 < count)
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p0, axis=1) + gl.sum(p1, axis=1)
            m_i = m_new
            acc = warpgroup_mma_wait(0, deps=(acc, ))  # P.V of tile t - 1 is done: its stage and P's buffer are free
            mbarrier.arrive(empty.index(prev))
            acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
            _stage_probabilities(p_smem, p0, p1, v0, v1)
        values = v_bufs.index((tiles - 1) % STAGES)
        acc = warpgroup_mma(p_smem.index(0), values.slice(0, HEAD_DIM).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(p_smem.index(1), values.slice(HEAD_DIM, HEAD_DIM).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index((tiles - 1) % STAGES))
    l_safe = gl.where(l_i == 0.0, 1.0, l_i)
    out = acc * gl.convert_layout(out_factor / l_safe, o_rows)[:, None]
    q_smem.store(out.to(dtype))  # the query rows are in registers: their buffer stages the output
    fence_async_shared()
    tma_store(o_desc, [q_row, q_col], q_smem)
    tma.store_wait(0)


@gluon.jit
def _sparse_attn_fp8_kernel(q_desc, k_desc, vt_desc, o_desc, IDX, CNT, ORDER, KS, VS, qk_scale,
                            H, NQ, NK, Q_PER_BATCH, Q_PER_HEAD, Q_COL_PER_HEAD, KV_PER_BATCH, KV_PER_HEAD,
                            VT_PER_BATCH, VT_PER_HEAD, SLICE_BLOCKS, SLICES,
                            STAGES: gl.constexpr, ATTEND_REGISTERS: gl.constexpr, LOAD_REGISTERS: gl.constexpr,
                            num_warps: gl.constexpr):
    """One program = one 128-row query block (``ORDER[program]`` = (b * H + h) * NQ + query block), its
    rows split over two attention partitions of ``num_warps`` warps each."""
    Q_ROWS: gl.constexpr = q_desc.block_type.shape[0]
    gl.static_assert(Q_ROWS * 2 == 128, "the query box covers 64 rows")
    b, h, count, idx_row, q_row, q_col = _query_block(ORDER, CNT, IDX, H, NQ, NK, Q_PER_BATCH, Q_PER_HEAD,
                                                      Q_COL_PER_HEAD)
    kv_row = b * KV_PER_BATCH + h * KV_PER_HEAD
    vt_row = b * VT_PER_BATCH + h * VT_PER_HEAD
    # The head's largest value scale: P is scaled by each block's share of it (at most 1) times P_RANGE.
    v_max = gl.load(VS + h)
    for s in range(1, SLICES):
        v_max = gl.maximum(v_max, gl.load(VS + s * H + h))
    v_max = gl.maximum(v_max, 1e-30)

    BLOCK: gl.constexpr = k_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = k_desc.block_type.shape[1]
    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES, 2 * BLOCK, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(vt_desc.dtype, [STAGES, 2 * HEAD_DIM, BLOCK], vt_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([Q_ROWS, BLOCK], gl.float8e4nv)
    p_first = gl.allocate_shared_memory(gl.float8e4nv, [2, Q_ROWS, BLOCK], p_layout)  # two halves per partition
    p_second = gl.allocate_shared_memory(gl.float8e4nv, [2, Q_ROWS, BLOCK], p_layout)
    q_bar, ready, empty = _stage_barriers(STAGES, 2)

    V_T: gl.constexpr = True  # values in (d, key) rows
    v_ratio = P_RANGE / v_max
    out_factor = v_max / P_RANGE
    gl.warp_specialize([
        (_attend_partition_fp8, (q_bufs.index(0), p_first, k_bufs, v_bufs, q_bar, ready, empty, o_desc, idx_row, count, q_row,
                                 q_col, qk_scale, KS, VS, h, H, SLICE_BLOCKS, v_ratio, out_factor, STAGES, num_warps)),
        (_attend_partition_fp8, (q_bufs.index(1), p_second, k_bufs, v_bufs, q_bar, ready, empty, o_desc, idx_row, count,
                                 q_row + Q_ROWS, q_col, qk_scale, KS, VS, h, H, SLICE_BLOCKS, v_ratio, out_factor,
                                 STAGES, num_warps)),
        (_load_partition, (q_desc, k_desc, vt_desc, q_bufs, k_bufs, v_bufs, q_bar, ready, empty, idx_row, count,
                           q_row, q_col, kv_row, vt_row, STAGES, V_T)),
    ], [num_warps, 1], [ATTEND_REGISTERS, LOAD_REGISTERS])


def sparse_attention_gluon_fp8(q: torch.Tensor, kv: FP8KeysValues, idx: torch.Tensor, cnt: torch.Tensor,
                               order: torch.Tensor, *, scale: float | None = None, options: dict | None = None
                               ) -> torch.Tensor:
    """Attention of ``q`` over the FP8 keys and transposed values of ``kv`` along the compacted kept-block
    lists (``idx``, ``cnt``, ``order`` of :func:`kernels.triton_sparse.compact_block_lists`); the output
    has q's dtype and memory layout. ``options`` overrides keys of :data:`LAUNCH_OPTIONS`. The caller
    checks :func:`supported` first."""
    b, h, lq, d = q.shape
    lk = kv.keys.shape[2]
    nq, nk = lq // Q_BLOCK, lk // K_BLOCK
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    qv, kv_view, vt_view = rows_view(q), rows_view(kv.keys), rows_view(kv.values_t)
    assert qv is not None and kv_view is not None and vt_view is not None and rows_view(out) == qv, \
        "call supported() first"
    opts = {**LAUNCH_OPTIONS, **(options or {})}
    q_box = [Q_BLOCK // 2, d]
    _sparse_attn_fp8_kernel[(b * h * nq,)](
        descriptor(q, qv, q_box), descriptor(kv.keys, kv_view, [K_BLOCK, d]),
        descriptor(kv.values_t, vt_view, [d, K_BLOCK]), descriptor(out, qv, q_box),
        idx, cnt, order, kv.key_scales, kv.value_scales, scale * math.log2(math.e),
        h, nq, nk, qv.per_batch, qv.per_head, qv.col_per_head, kv_view.per_batch, kv_view.per_head,
        vt_view.per_batch, vt_view.per_head, kv.slice_len // K_BLOCK, lk // kv.slice_len,
        STAGES=opts["stages"], ATTEND_REGISTERS=opts["attend_registers"], LOAD_REGISTERS=opts["load_registers"],
        num_warps=opts["num_warps"], maxnreg=opts["maxnreg"], **FP_FUSION)
    return out
