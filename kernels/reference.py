"""Pure-PyTorch LCSA: the block-mask builder and a dense-SDPA block-sparse attention.

The mask follows FlashVSR's ``generate_draft_block_mask_sage`` with the "normal slide" local window
(`build_local_block_mask_shifted_vec_normal_slide`): Q is mean-pooled per 128-token window, K per
64-token half window, scores are computed in the input dtype and divided by sqrt(D), windows outside the
``local_range`` neighbourhood get -inf, a softmax runs per query window over all key half windows, and per
(batch, head, query time slice) the entries strictly greater than the (topk+1)-th largest value of the
flattened (windows of the slice x key half windows) map are kept.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Q_BLOCK = 128
K_BLOCK = 64
# Bound on elements of the token-level boolean mask materialised at once by the SDPA path.
_SDPA_CHUNK_ELEMENTS = 1 << 26
FP8_KV_DTYPE = torch.float8_e4m3fn


@dataclass(frozen=True)
class SliceScales:
    """Dequantisation scales of FP8 (e4m3) keys stored per time slice and head, as the streaming cache
    keeps them: ``scales`` float32 ``(slices, H)``, contiguous; token ``t`` of head ``h`` holds
    ``stored * scales[t // slice_len, h]``. ``slice_len`` is a multiple of 64 (whole key blocks)."""

    scales: torch.Tensor
    slice_len: int


@dataclass(frozen=True)
class FP8KeysValues:
    """The FP8 streaming cache as the FP8 attention kernel reads it: ``keys`` e4m3 ``(B, H, L, D)``,
    ``values_t`` e4m3 stored transposed ``(B, H, D, L)`` (views of the filled part, padding allowed),
    each with float32 scales ``(>= L / slice_len, H)``, contiguous, one per time slice and head."""

    keys: torch.Tensor
    values_t: torch.Tensor
    key_scales: torch.Tensor
    value_scales: torch.Tensor
    slice_len: int

    def __post_init__(self) -> None:
        b, h, length, d = self.keys.shape
        if self.keys.dtype != FP8_KV_DTYPE or self.values_t.dtype != FP8_KV_DTYPE:
            raise ValueError(f"keys and values_t must be {FP8_KV_DTYPE}, got {self.keys.dtype} / {self.values_t.dtype}")
        if tuple(self.values_t.shape) != (b, h, d, length):
            raise ValueError(f"values_t {tuple(self.values_t.shape)} must be the keys' {(b, h, length, d)} transposed")
        if self.slice_len <= 0 or self.slice_len % K_BLOCK or length % self.slice_len:
            raise ValueError(f"slice_len {self.slice_len} must be a multiple of {K_BLOCK} dividing L={length}")
        for name in ("key_scales", "value_scales"):
            t = getattr(self, name)
            if (t.dtype != torch.float32 or t.dim() != 2 or t.shape[0] < length // self.slice_len or t.shape[1] != h
                    or not t.is_contiguous()):
                raise ValueError(f"{name} must be contiguous float32 (>= {length // self.slice_len}, {h}), got "
                                 f"{t.dtype} {tuple(t.shape)}")

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, H, L, D)`` in ``dtype`` (values contiguous), for the other backends."""
        keys = dequantize_slices(self.keys, self.key_scales, self.slice_len, dtype)
        values = dequantize_slices(self.values_t.transpose(2, 3), self.value_scales, self.slice_len, dtype)
        return keys, values.contiguous()


def quantize_slices(x: torch.Tensor, slice_len: int, dtype: torch.dtype = FP8_KV_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (B, H, n * slice_len, D)`` -> FP8 values and float32 scales ``(n, H)`` (contiguous), one per
    slice and head: each slice's absolute maximum maps to the format's largest value."""
    b, h, length, d = x.shape
    slices = x.view(b, h, length // slice_len, slice_len, d)
    amax = slices.abs().amax(dim=(0, 3, 4)).float().clamp_min(1e-12)  # (H, n)
    scale = amax / torch.finfo(dtype).max
    values = (slices / scale.to(x.dtype)[None, :, :, None, None]).to(dtype).view(b, h, length, d)
    return values, scale.t().contiguous()


def dequantize_slices(x: torch.Tensor, scales: torch.Tensor, slice_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_slices`: FP8 ``x (B, H, n * slice_len, D)`` with scales ``(>= n, H)``
    -> ``dtype``."""
    b, h, length, d = x.shape
    slices = x.view(b, h, length // slice_len, slice_len, d).to(dtype)
    return (slices * scales[: length // slice_len].t().to(dtype)[None, :, :, None, None]).view(b, h, length, d)


def check_key_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_scales: SliceScales | None) -> bool:
    """Validate dtypes: v in q's dtype, k too or FP8 with ``key_scales``. Returns whether k is FP8."""
    if v.dtype != q.dtype:
        raise ValueError(f"v must have q's dtype {q.dtype}, got {v.dtype}")
    if k.dtype == FP8_KV_DTYPE:
        if key_scales is None:
            raise ValueError("FP8 keys need key_scales")
        t, slice_len = key_scales.scales, key_scales.slice_len
        if slice_len <= 0 or slice_len % K_BLOCK or k.shape[2] % slice_len:
            raise ValueError(f"slice_len {slice_len} must be a multiple of {K_BLOCK} dividing Lk={k.shape[2]}")
        slices = k.shape[2] // slice_len
        if t.dtype != torch.float32 or t.dim() != 2 or t.shape[0] < slices or t.shape[1] != k.shape[1]:
            raise ValueError(f"key_scales.scales must be float32 (>= {slices}, {k.shape[1]}), got {t.dtype} {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError("key_scales.scales must be contiguous")
        return True
    if k.dtype != q.dtype:
        raise ValueError(f"q/k dtypes differ: {q.dtype}, {k.dtype}")
    if key_scales is not None:
        raise ValueError("key_scales given for keys that are not FP8")
    return False


def local_window_mask(grid: tuple[int, int], local_range: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, N)`` bool, N = win_h * win_w: key window j is inside query window i's neighbourhood.

    "Normal slide": the window starts ``local_range // 2`` before the query window and is not clamped
    at the borders, so edge windows see fewer neighbours.
    """
    win_h, win_w = grid
    rows = torch.arange(win_h, device=device).repeat_interleave(win_w)
    cols = torch.arange(win_w, device=device).repeat(win_h)
    half = local_range // 2
    start_r = rows - half
    start_c = cols - half
    in_row = (rows[None, :] >= start_r[:, None]) & (rows[None, :] <= start_r[:, None] + local_range - 1)
    in_col = (cols[None, :] >= start_c[:, None]) & (cols[None, :] <= start_c[:, None] + local_range - 1)
    return in_row & in_col


@functools.lru_cache(maxsize=16)
def local_score_bias(grid: tuple[int, int], local_range: int, key_slices: int, device: torch.device) -> torch.Tensor:
    """``(N, key_slices * N * 2)`` fp32 additive bias: 0 inside the neighbourhood, -inf outside (cached, read-only).

    Column order is (key time slice, key window, half), the order of the 64-token K blocks.
    """
    local = local_window_mask(grid, local_range, device)
    n = local.shape[0]
    cols = local[:, None, :, None].expand(n, key_slices, n, 2).reshape(n, key_slices * n * 2)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    return torch.where(cols, zero, torch.tensor(-math.inf, device=device))


def check_mask_inputs(q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    """Validate LCSA shapes; return (query time slices, key time slices)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, H, L, D) with equal B, H, D")
    per_slice = grid[0] * grid[1] * Q_BLOCK
    if q.shape[2] % per_slice or k.shape[2] % per_slice:
        raise ValueError(
            f"Lq={q.shape[2]} and Lk={k.shape[2]} must be multiples of win_h*win_w*128={per_slice} (grid={grid})"
        )
    return q.shape[2] // per_slice, k.shape[2] // per_slice


def pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of every ``block`` consecutive tokens of ``(B, H, L, D)``, in the input dtype: ``(B, H, L/block, D)``."""
    return x.unflatten(2, (-1, block)).mean(dim=3)


def block_scores(q: torch.Tensor, k: torch.Tensor, k_pooled: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled scores ``(B, H, Lq/128, Lk/64)`` in the input dtype, as the reference computes them.

    ``k_pooled`` (``pool_blocks(k, 64)``, e.g. kept from when each key slice was written) replaces the
    pooling of ``k``, which is then not read.
    """
    d = q.shape[-1]
    q_pool = pool_blocks(q, Q_BLOCK)
    k_pool = pool_blocks(k, K_BLOCK) if k_pooled is None else k_pooled.to(q.dtype)
    return torch.matmul(q_pool, k_pool.transpose(-1, -2)) / math.sqrt(d)


@functools.lru_cache(maxsize=16)
def local_candidate_columns(
    grid: tuple[int, int], local_range: int, key_slices: int, device: torch.device
) -> torch.Tensor | None:
    """``(N, key_slices * M * 2)`` long: per query window, the columns of the probability map that can
    be non-zero (its ``M`` = at most ``local_range**2`` neighbourhood windows, both halves, every key
    slice); rows with fewer neighbours are padded with columns outside the neighbourhood (probability
    exactly 0). None when the neighbourhood is more than half the windows (nothing worth skipping).
    """
    local = local_window_mask(grid, local_range, device)
    n = local.shape[0]
    m = int(local.sum(dim=1).max())
    if 2 * m > n:
        return None
    windows = torch.argsort(local.to(torch.int8), dim=1, descending=True, stable=True)[:, :m]  # neighbours first
    slices = torch.arange(key_slices, device=device)[None, :, None, None] * n
    halves = torch.arange(2, device=device)[None, None, None, :]
    return ((slices + windows[:, None, :, None]) * 2 + halves).reshape(n, key_slices * m * 2)


def topk_threshold_mask(
    prob: torch.Tensor, topk: int, query_slices: int, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep entries strictly above the (topk+1)-th largest value per (B, H, query time slice).

    ``prob`` is ``(B, H, Lq/128, Lk/64)``, non-negative; ``topk <= 0`` keeps nothing. ``candidates``
    (:func:`local_candidate_columns`) restricts the selection to the entries that can be non-zero:
    the others are zeros, and adding zeros to non-negative values changes the (k+1)-th largest only
    when fewer than k+1 values are left, where it is 0. Same mask, on a fraction of the values.
    """
    b, h, nq, nk = prob.shape
    row_length = (nq // query_slices) * nk
    apply_topk = min(row_length - 1, topk)
    if apply_topk <= 0:
        return torch.zeros(prob.shape, dtype=torch.bool, device=prob.device)
    values = prob
    if candidates is not None:
        per_slice = prob.unflatten(2, (query_slices, -1))
        values = torch.gather(per_slice, 4, candidates.expand(b, h, query_slices, *candidates.shape))
    flat = values.reshape(b, h, query_slices, -1)
    if apply_topk + 1 > flat.shape[-1]:
        threshold = torch.zeros((b, h, query_slices, 1), dtype=prob.dtype, device=prob.device)
    else:
        # The (k+1)-th largest value; unsorted top-k and a min give the same value as a sorted top-k.
        threshold = torch.topk(flat, apply_topk + 1, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    return (prob.reshape(b, h, query_slices, row_length) > threshold).reshape(b, h, nq, nk)


def block_probabilities(
    q: torch.Tensor, k: torch.Tensor, *, local_range: int, grid: tuple[int, int], k_pooled: torch.Tensor | None = None
) -> tuple[torch.Tensor, int, int]:
    """fp32 softmax of the locally masked pooled scores ``(B, H, Lq/128, Lk/64)``, and the query and key
    slice counts."""
    query_slices, key_slices = check_mask_inputs(q, k, grid)
    scores = block_scores(q, k, k_pooled)
    bias = local_score_bias(tuple(grid), local_range, key_slices, q.device)
    prob = torch.softmax(scores.float().unflatten(2, (query_slices, -1)) + bias, dim=-1)
    return prob.flatten(2, 3), query_slices, key_slices


def lcsa_block_mask_torch(
    q: torch.Tensor, k: torch.Tensor, *, local_range: int, topk: int, grid: tuple[int, int],
    k_pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """LCSA block mask ``(B, H, Lq/128, Lk/64)`` computed with PyTorch ops (any device); ``k_pooled`` as in
    :func:`block_scores`."""
    prob, query_slices, key_slices = block_probabilities(q, k, local_range=local_range, grid=grid, k_pooled=k_pooled)
    candidates = local_candidate_columns(tuple(grid), local_range, key_slices, q.device)
    return topk_threshold_mask(prob, topk, query_slices, candidates)


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor) -> None:
    """Validate shapes of a block-sparse attention call."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if k.shape != (b, h, lk, d) or v.shape != (b, h, lk, v.shape[3]):
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if lq % Q_BLOCK or lk % K_BLOCK:
        raise ValueError(f"Lq={lq} must be a multiple of {Q_BLOCK} and Lk={lk} of {K_BLOCK}")
    expected = (b, h, lq // Q_BLOCK, lk // K_BLOCK)
    if tuple(block_mask.shape) != expected or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be bool {expected}, got {block_mask.dtype} {tuple(block_mask.shape)}")


def sparse_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """Block-sparse attention by dense SDPA with the mask expanded to tokens (query blocks in chunks).

    Query blocks without any kept key block give zeros.
    """
    check_attention_inputs(q, k, v, block_mask)
    lk = k.shape[2]
    nq = block_mask.shape[2]
    out = torch.empty(q.shape[:3] + (v.shape[3],), dtype=q.dtype, device=q.device)
    blocks_per_chunk = max(1, _SDPA_CHUNK_ELEMENTS // (q.shape[0] * q.shape[1] * Q_BLOCK * lk))
    for start in range(0, nq, blocks_per_chunk):
        stop = min(nq, start + blocks_per_chunk)
        chunk = block_mask[:, :, start:stop]
        token_mask = chunk.repeat_interleave(Q_BLOCK, dim=2).repeat_interleave(K_BLOCK, dim=3)
        rows = slice(start * Q_BLOCK, stop * Q_BLOCK)
        part = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=token_mask, scale=scale)
        empty = ~chunk.any(dim=-1).repeat_interleave(Q_BLOCK, dim=2)
        out[:, :, rows] = part.masked_fill(empty[..., None], 0)
    return out
