"""Triton block-sparse attention over kept (128 query x 64 key) blocks.

Each query block's kept key blocks are first compacted into a per-row list (indices + count), so the
attention kernel iterates only over kept blocks. Rows with nothing kept are launched last (they only
write zeros); the others run either in mask order (neighbouring windows share key blocks in L2) or
longest-first. Softmax is online in fp32 (exp2), ``tl.dot`` runs in the input dtype.

Two ways to fetch a kept K/V tile, chosen by GPU generation:

- on Hopper and newer, tensor-memory-accelerator (TMA) loads through 4D tensor descriptors (no address
  arithmetic in the loop, asynchronous bulk copies), one kept 64-key block per iteration;
- elsewhere, pointer gathers; ``BLOCK_N = 128`` then gathers two kept blocks into one tile.

On Hopper (sm_90) bf16/fp16 calls go to the warp-specialised Gluon kernel of
:mod:`kernels.gluon_sparse` instead (same lists, same contract); the Triton kernel serves every other
GPU, FP8 keys and explicit configs.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import triton_compat
from kernels.reference import K_BLOCK, Q_BLOCK, FP8KeysValues, SliceScales, check_attention_inputs, check_key_dtype

logger = logging.getLogger(__name__)

SUPPORTED_HEAD_DIMS = (64, 128)
# Used where autotuning is impossible (the CPU interpreter) or unwanted (explicit config).
DEFAULT_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
TMA_MIN_ARCH = 90
FP8_MIN_ARCH = 89
WARP_SPECIALIZED_ENV = "FLASHVSR_WARP_SPECIALIZED"  # "0" keeps sm_90 on the Triton kernel


@triton.jit
def _compact_rows_kernel(MASK, IDX, CNT, NK, CHUNK: tl.constexpr):
    """Per mask row: write the kept column indices (ascending) to IDX[row, :count] and count to CNT."""
    row = tl.program_id(0).to(tl.int64)
    total = 0
    for start in range(0, NK, CHUNK):
        cols = start + tl.arange(0, CHUNK)
        kept = tl.load(MASK + row * NK + cols, mask=cols < NK, other=0).to(tl.int32)
        slot = tl.cumsum(kept, 0) - 1 + total
        tl.store(IDX + row * NK + slot, cols, mask=kept > 0)
        total += tl.sum(kept, 0)
    tl.store(CNT + row, total)


@triton.jit
def _attend_tile(s, row_scale, v, m_i, l_i, acc):
    """One online-softmax step: raw scores ``s`` of a key tile, a positive per-row ``row_scale`` (log2
    units), values ``v``; updates the running max ``m_i`` (log2 units), sum ``l_i`` and fp32
    accumulator ``acc``. The max is taken over the raw scores and scaled once per row, so each score
    costs one fused multiply-add before ``exp2``."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
    p = tl.math.exp2(s * row_scale[:, None] - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
    return m_new, l_i * alpha + tl.sum(p, 1), acc


@triton.jit
def _quantize_rows(q):
    """e4m3 copy of a query tile, each row scaled by its absolute maximum, and the per-row scales."""
    qf = q.to(tl.float32)
    row_scale = tl.maximum(tl.max(tl.abs(qf), 1), 1e-12) / 448.0
    return (qf / row_scale[:, None]).to(tl.float8e4nv), row_scale


@triton.jit
def _sparse_attn_fwd(
    Q, K, V, O, IDX, CNT, ORDER, KS, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    B, H, LQ, LK, NQ, NK, SLICE_BLOCKS,
    ARCH: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_TMA: tl.constexpr, K_FP8: tl.constexpr,
):
    """One program = BLOCK_M query rows of one 128-row query block; loops over that block's kept list.

    With ``K_FP8`` the keys are e4m3 with float32 scales ``KS (slices, H)`` (key block ``j`` of head
    ``h``: ``KS[j // SLICE_BLOCKS, h]``), the query rows are quantised to e4m3 and Q.K^T runs in FP8."""
    SPLIT: tl.constexpr = 128 // BLOCK_M
    PAIRS: tl.constexpr = BLOCK_N // 64
    tl.static_assert(not USE_TMA or PAIRS == 1, "TMA loads take one 64-key block per iteration")
    pid = tl.program_id(0)
    row = tl.load(ORDER + pid // SPLIT).to(tl.int64)  # row = (b * H + h) * NQ + q block
    sub = pid % SPLIT
    bh = row // NQ
    q_block = row % NQ
    b = bh // H
    h = bh % H
    count = tl.load(CNT + row)
    idx_row = IDX + row * NK

    offs_m = q_block * 128 + sub * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if USE_TMA:
        b32, h32 = b.to(tl.int32), h.to(tl.int32)
        q_desc = tl.make_tensor_descriptor(Q, shape=[B, H, LQ, HEAD_DIM], strides=[stride_qb, stride_qh, stride_qm, 1],
                                           block_shape=[1, 1, BLOCK_M, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(K, shape=[B, H, LK, HEAD_DIM], strides=[stride_kb, stride_kh, stride_kn, 1],
                                           block_shape=[1, 1, 64, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(V, shape=[B, H, LK, HEAD_DIM], strides=[stride_vb, stride_vh, stride_vn, 1],
                                           block_shape=[1, 1, 64, HEAD_DIM])
        q = q_desc.load([b32, h32, (q_block * 128 + sub * BLOCK_M).to(tl.int32), 0]).reshape([BLOCK_M, HEAD_DIM])
        if K_FP8:
            q, q_scale = _quantize_rows(q)
            q_scale = q_scale * qk_scale
        else:
            q_scale = tl.full([BLOCK_M], qk_scale, dtype=tl.float32)
        for j in range(0, count):
            block = tl.load(idx_row + j)
            k = k_desc.load([b32, h32, block * 64, 0]).reshape([64, HEAD_DIM])
            v = v_desc.load([b32, h32, block * 64, 0]).reshape([64, HEAD_DIM])
            if K_FP8:
                k_scale = tl.load(KS + (block // SLICE_BLOCKS) * H + h)
                m_i, l_i, acc = _attend_tile(tl.dot(q, tl.trans(k)), q_scale * k_scale, v, m_i, l_i, acc)
            else:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
                m_i, l_i, acc = _attend_tile(s, q_scale, v, m_i, l_i, acc)
    else:
        # An empty row loads nothing. The mask compares a splatted tensor, not a splatted scalar comparison:
        # the interpreter materialises ``count > 0`` splatted as int32, which Triton 3.9 refuses as a mask
        # (the compiled code is the same either way).
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=tl.full([1, HEAD_DIM], count, tl.int32) > 0, other=0.0)
        if K_FP8:
            q, q_scale = _quantize_rows(q)
            q_scale = q_scale * qk_scale
        else:
            q_scale = tl.full([BLOCK_M], qk_scale, dtype=tl.float32)
        k_base = K + b * stride_kb + h * stride_kh + offs_d[None, :] * stride_kd
        v_base = V + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd
        for j in range(0, count, PAIRS):
            slot = j + offs_n // 64
            valid = slot < count
            blocks = tl.load(idx_row + slot, mask=valid, other=0)
            key_rows = blocks.to(tl.int64) * 64 + offs_n % 64
            k = tl.load(k_base + key_rows[:, None] * stride_kn, mask=valid[:, None], other=0.0)
            v = tl.load(v_base + key_rows[:, None] * stride_vn, mask=valid[:, None], other=0.0)
            if K_FP8:
                k_scale = tl.load(KS + (blocks // SLICE_BLOCKS) * H + h)
                s = tl.dot(q, tl.trans(k)) * k_scale[None, :]
            else:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            if PAIRS > 1:
                s = tl.where(valid[None, :], s, float("-inf"))
            m_i, l_i, acc = _attend_tile(s, q_scale, v, m_i, l_i, acc)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty))


def _autotune_configs(use_tma: bool) -> list[triton.Config]:
    """Candidate configs (BLOCK_M, BLOCK_N, warps, stages) of one load path."""
    if use_tma:
        # On an H200 every shape chose (128, 64, 4, 2); two kept blocks per iteration (with or without
        # part of the exp2 work on the FMA pipes) never won and were removed (docs/attention.md).
        shapes = ((128, 64, 4, 2), (128, 64, 4, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3))
    else:
        # Measured on an H100 before TMA: one warpgroup on 128 x 64 tiles won (docs/attention.md).
        shapes = ((128, 64, 4, 4), (128, 64, 4, 3), (128, 64, 4, 2), (128, 128, 8, 2), (128, 128, 8, 3),
                  (128, 64, 8, 3), (64, 64, 4, 3))
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m, block_n, warps, stages in shapes
    ]


_TUNE_KEY = ["ARCH", "HEAD_DIM", "USE_TMA", "K_FP8"]
_tuned = {
    use_tma: triton.autotune(configs=_autotune_configs(use_tma), key=_TUNE_KEY)(_sparse_attn_fwd)
    for use_tma in (False, True)
}


def tuned_kernel(use_tma: bool):
    """The autotuned launcher of one load path (benchmarks read its ``best_config``)."""
    return _tuned[use_tma]


def compact_block_lists(
    block_mask: torch.Tensor, schedule: str = "locality"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept-block lists of a ``(B, H, NQ, NK)`` mask.

    Returns ``idx`` int32 ``(B*H*NQ, NK)`` (row r's kept key blocks in ``idx[r, :cnt[r]]``, ascending),
    ``cnt`` int32 ``(B*H*NQ,)`` and ``order`` int32, the launch order of the rows:
    ``"locality"`` keeps non-empty rows in (batch, head, query block) order, so neighbouring query windows
    that share key blocks run together (L2 reuse), and puts empty rows last; ``"lpt"`` sorts rows by
    descending count (longest first, for the tail).
    """
    nk = block_mask.shape[-1]
    rows = block_mask.reshape(-1, nk).contiguous().view(torch.uint8)
    idx = torch.empty(rows.shape, dtype=torch.int32, device=rows.device)
    cnt = torch.empty(rows.shape[0], dtype=torch.int32, device=rows.device)
    _compact_rows_kernel[(rows.shape[0],)](rows, idx, cnt, nk, CHUNK=min(1024, triton.next_power_of_2(nk)),
                                          **triton_compat.FP_FUSION)
    if schedule == "lpt":
        order = torch.argsort(cnt, descending=True)
    elif schedule == "locality":
        order = torch.argsort((cnt == 0).to(torch.int8), stable=True)
    else:
        raise ValueError(f"unknown schedule {schedule!r}: expected 'locality' or 'lpt'")
    return idx, cnt, order.to(torch.int32)


@dataclass
class _GluonStatus:
    """Whether the Gluon kernel launched in this process, or why it was switched off after failing on
    first use (e.g. a Triton or driver that cannot compile it): the Triton kernel then serves."""

    proven: bool = False
    failure: str | None = None


_GLUON = _GluonStatus()
_GLUON_FP8 = _GluonStatus()


@functools.cache
def _gluon_kernels():
    """:mod:`kernels.gluon_sparse`, or None where it is switched off (``FLASHVSR_WARP_SPECIALIZED=0``) or
    this Triton cannot express it (:data:`kernels.triton_compat.GLUON`). Decided once, at the first
    attention call (a worker's warm-up), and logged in one line: the Triton release, why, and what serves
    sm_90 instead; a warning where the Triton release is the reason (the operator loses the fast path)."""
    value = os.environ.get(WARP_SPECIALIZED_ENV, "1").strip().lower()
    if value not in ("0", "1"):
        raise ValueError(f"{WARP_SPECIALIZED_ENV}={value!r}: expected 0 or 1")
    module, reason, level = None, f"{WARP_SPECIALIZED_ENV}=0", logging.INFO
    if value == "1":
        reason = triton_compat.GLUON.reason
        if triton_compat.GLUON.available:
            from kernels import gluon_sparse as module
        else:
            reason += f"; to get it back, install a Triton it is tested on ({', '.join(triton_compat.TESTED)})"
            level = logging.WARNING
    message = "warp-specialised attention kernel for sm_90: enabled=%s triton=%s reason=%r"
    if module is None:
        logger.log(level, message + " instead=%r", False, triton.__version__, reason, "the Triton kernel (TMA loads)")
    else:
        logger.log(level, message, True, triton.__version__, reason)
    return module


def _arch(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def tma_supported(device: torch.device) -> bool:
    """Whether the TMA load path is used on ``device`` (Hopper and newer)."""
    return _arch(device) >= TMA_MIN_ARCH


def _scratch_allocator(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global scratch for the kernel's in-kernel tensor descriptors (a few hundred bytes per program)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _check_tma_layout(*tensors: torch.Tensor) -> bool:
    """TMA needs a unit last stride and 16-byte aligned base and strides."""
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((s * size) % 16 for s in t.stride()[:-1]):
            return False
    return True


def sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    scale: float | None = None,
    key_scales: SliceScales | None = None,
    use_tma: bool | None = None,
    config: dict | None = None,
    schedule: str = "locality",
    warp_specialized: bool | None = None,
) -> torch.Tensor:
    """Block-sparse attention with the Triton kernel; the output has q's dtype and memory layout.

    FP8 (e4m3) ``k`` comes with ``key_scales``: the kernel then quantises each query row to e4m3 and
    runs Q.K^T in FP8 (compute capability 8.9 and newer; docs/attention.md has its accuracy); P.V stays
    in q's dtype. ``use_tma`` None picks TMA loads on Hopper and newer when the layout allows (True
    forces them, e.g. under the interpreter); ``config`` fixes BLOCK_M/BLOCK_N/num_warps/num_stages
    (default: autotuned on CUDA, :data:`DEFAULT_CONFIG` elsewhere, e.g. under ``TRITON_INTERPRET=1``);
    ``schedule`` is the row launch order (see :func:`compact_block_lists`). ``warp_specialized`` None
    runs the Gluon kernel (:mod:`kernels.gluon_sparse`) where it applies (sm_90, bf16/fp16 keys, no
    ``config``, ``use_tma`` not False); True forces it (an error where it cannot run), False never.
    """
    check_attention_inputs(q, k, v, block_mask)
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS or v.shape[-1] != d:
        raise ValueError(f"Triton sparse attention supports head dim {SUPPORTED_HEAD_DIMS}, got q {d} / v {v.shape[-1]}")
    k_fp8 = check_key_dtype(q, k, v, key_scales)
    if k_fp8 and q.is_cuda and _arch(q.device) < FP8_MIN_ARCH:
        raise ValueError(f"FP8 keys need compute capability {FP8_MIN_ARCH / 10:.1f}+ for the FP8 Q.K^T product")
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    nq, nk = lq // Q_BLOCK, lk // K_BLOCK
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    gluon = _gluon_kernels()
    forced = bool(warp_specialized)
    if warp_specialized is None:
        warp_specialized = (gluon is not None and _GLUON.failure is None and not k_fp8 and config is None
                            and use_tma is not False and gluon.supported(q, k, v))
    elif warp_specialized and gluon is None:
        off = triton_compat.GLUON.reason if not triton_compat.GLUON.available else f"{WARP_SPECIALIZED_ENV}=0"
        raise ValueError(f"the warp-specialised kernel is off in this process: {off}")
    elif warp_specialized and (k_fp8 or not gluon.supported(q, k, v)):
        raise ValueError("the warp-specialised kernel needs an sm_90 GPU, bf16/fp16 q/k/v of one dtype, head dim "
                         "64 or 128 and layouts it addresses (kernels.gluon_sparse.layouts_fit)")
    idx, cnt, order = compact_block_lists(block_mask, schedule)
    if warp_specialized:
        try:
            out = gluon.sparse_attention_gluon(q, k, v, idx, cnt, order, scale=scale)
        except Exception as exc:
            if forced or _GLUON.proven or isinstance(exc, torch.OutOfMemoryError):
                raise
            _GLUON.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            logger.error("warp-specialised attention kernel failed on first use, switched off for this process "
                         "(the Triton kernel serves): %s", _GLUON.failure)
        else:
            _GLUON.proven = True
            return out
    if use_tma is None:
        use_tma = tma_supported(q.device) and _check_tma_layout(q, k, v)
    if use_tma and q.is_cuda:
        triton.set_allocator(_scratch_allocator)
    out = torch.empty_like(q)  # same strides as q: the DiT's (B, L, H, D) memory needs no transpose after
    args = (
        q, k, v, out, idx, cnt, order, key_scales.scales if k_fp8 else cnt, scale * math.log2(math.e),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        b, h, lq, lk, nq, nk, key_scales.slice_len // K_BLOCK if k_fp8 else 1,
    )
    flags = {"ARCH": _arch(q.device), "HEAD_DIM": d, "USE_TMA": use_tma, "K_FP8": k_fp8}
    if config is None and q.is_cuda:
        grid = lambda meta: (b * h * nq * (128 // meta["BLOCK_M"]),)  # noqa: E731
        _tuned[use_tma][grid](*args, **flags, **triton_compat.FP_FUSION)
    else:
        cfg = {**DEFAULT_CONFIG, **(config or {})}
        grid = (b * h * nq * (128 // cfg["BLOCK_M"]),)
        _sparse_attn_fwd[grid](*args, **flags, **cfg, **triton_compat.FP_FUSION)
    return out


def fp8_kernel_available(device: torch.device) -> bool:
    """Whether :func:`sparse_attention_fp8_cache` multiplies in FP8 on ``device``: an sm_90 GPU with the
    warp-specialised kernels on (:func:`_gluon_kernels`) and no failure of the FP8 kernel so far."""
    return _arch(device) == 90 and _gluon_kernels() is not None and _GLUON_FP8.failure is None


def sparse_attention_fp8_cache(q: torch.Tensor, kv: FP8KeysValues, block_mask: torch.Tensor, *,
                               scale: float | None = None, schedule: str = "locality") -> torch.Tensor:
    """Block-sparse attention over the FP8 cache as stored (e4m3 keys, transposed e4m3 values, per slice
    and head scales): both products in FP8 on sm_90 (:mod:`kernels.gluon_sparse_fp8`). Elsewhere, or
    once that kernel has failed on its first use (logged once), the keys and values are dequantised and
    :func:`sparse_attention_triton` runs in q's dtype. The output has q's dtype and memory layout."""
    check_attention_inputs(q, kv.keys, kv.keys, block_mask)  # the values' shape: FP8KeysValues checked it
    if fp8_kernel_available(q.device):
        from kernels import gluon_sparse_fp8

        if gluon_sparse_fp8.supported(q, kv):
            idx, cnt, order = compact_block_lists(block_mask, schedule)
            try:
                out = gluon_sparse_fp8.sparse_attention_gluon_fp8(q, kv, idx, cnt, order, scale=scale)
            except Exception as exc:
                if _GLUON_FP8.proven or isinstance(exc, torch.OutOfMemoryError):
                    raise
                _GLUON_FP8.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                logger.error("FP8 attention kernel failed on first use, switched off for this process (the keys "
                             "and values are dequantised and attention runs in %s): %s",
                             str(q.dtype).removeprefix("torch."), _GLUON_FP8.failure)
            else:
                _GLUON_FP8.proven = True
                return out
    k, v = kv.dequantized(q.dtype)
    return sparse_attention_triton(q, k, v, block_mask, scale=scale, schedule=schedule)
