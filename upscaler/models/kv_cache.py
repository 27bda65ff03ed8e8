"""The DiT's streaming self-attention K/V cache: one preallocated ring buffer per block.

FlashVSR keeps, per block, the K/V windows of the last ``kv_ratio`` time slices (a slice = 2 latent
frames = one row of LCSA windows) and attends over those plus the current step's slices. The
reference concatenates the cache with the new windows every step; here each block owns a buffer of
``slots`` slices in ``(B, H, slots * S, D)`` layout that is written in place, and attention reads the
filled prefix. The slot order of cached slices does not change the result: the LCSA mask is
threshold based per query slice and attention sums over keys.

Retention matches the reference exactly: it keeps 3 slices after step 0 (2 when ``kv_ratio`` < 3),
then adds one per step and drops the oldest once more than ``max(kv_ratio, 2)`` would remain, so
attention at step n >= 1 sees ``min(3 + n, max(kv_ratio, 2) + 1)`` slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels.reference import (
    FP8_KV_DTYPE,
    K_BLOCK,
    FP8KeysValues,
    SliceScales,
    dequantize_slices,
    pool_blocks,
    quantize_slices,
)
from upscaler.kv_cache_memory import ring_slots
from upscaler.models.config import DiTConfig
from upscaler.models.fusion import fusable

FIRST_STEP_SLICES = 3


def is_fp8(dtype: torch.dtype | None) -> bool:
    """Whether ``dtype`` is the FP8 storage format (e4m3, scaled per slice and head)."""
    return dtype == FP8_KV_DTYPE


def _quantize_transposed(x: torch.Tensor, slice_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_slices` with the values returned transposed, ``(B, H, D, L)`` contiguous."""
    values, scales = quantize_slices(x, slice_len, dtype)
    return values.transpose(2, 3).contiguous(), scales


# Compiled with the DiT's other element-wise chains: one pass each (at 4K, eager conversion then
# scaling cost an H100 ~19 ms per output frame).
_quantize = fusable(quantize_slices)
_quantize_t = fusable(_quantize_transposed)
_dequantize = fusable(dequantize_slices)


@dataclass(frozen=True)
class CachedKV:
    """What a block's attention reads after :meth:`DiTStreamCache.store`: K/V over the filled slots in
    the model dtype (views, or dequantised copies for FP8 storage; with ``fp8_keys`` the keys as stored,
    with their ``key_scales``), or with ``fp8_attention`` the FP8 keys and transposed values as stored
    (``fp8``; ``keys`` and ``values`` are then its tensors), and the keys mean-pooled per 64 tokens
    (pooled when each slice is written, before any quantisation) for the LCSA mask."""

    keys: torch.Tensor
    values: torch.Tensor
    pooled_keys: torch.Tensor
    key_scales: SliceScales | None = None
    fp8: FP8KeysValues | None = None


@dataclass
class DiTStreamCache:
    """Per-block K/V ring buffers, allocated on the first step (when the latent size is known).

    ``dtype`` None stores K/V in the model's compute dtype. ``fp8_keys`` (FP8 storage only) hands the
    keys to attention as stored, for an FP8 Q.K^T product, instead of dequantised. ``fp8_attention``
    (FP8 storage only) stores the values transposed, ``(B, H, D, slots * S)``, and hands keys and values
    to attention as stored, for FP8 Q.K^T and P.V products (:func:`kernels.sparse_attention_fp8`).
    """

    dtype: torch.dtype | None = None
    fp8_keys: bool = False
    fp8_attention: bool = False
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    pooled_keys: list[torch.Tensor] = field(default_factory=list)
    key_scales: list[torch.Tensor] = field(default_factory=list)
    value_scales: list[torch.Tensor] = field(default_factory=list)
    slots: int = 0
    slice_len: int = 0
    filled: int = 0
    next_slot: int = 0
    steps: int = 0
    _write: tuple[int, int] = (0, 0)

    @property
    def allocated(self) -> bool:
        return bool(self.keys)

    def nbytes(self) -> int:
        """Bytes currently held by the buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def allocate(self, cfg: DiTConfig, batch: int, slice_len: int, kv_ratio: float, device: torch.device,
                 dtype: torch.dtype) -> None:
        """Create the ring buffers (called by the DiT on step 0)."""
        store = self.dtype or dtype
        self.slots = ring_slots(kv_ratio)
        self.slice_len = slice_len
        if self.fp8_attention and not is_fp8(store):
            raise ValueError("fp8_attention needs the FP8 cache (dtype float8_e4m3fn)")
        shape = (batch, cfg.num_heads, self.slots * slice_len, cfg.head_dim)
        values_shape = (*shape[:2], shape[3], shape[2]) if self.fp8_attention else shape
        self.keys = [torch.empty(shape, device=device, dtype=store) for _ in range(cfg.num_layers)]
        self.values = [torch.empty(values_shape, device=device, dtype=store) for _ in range(cfg.num_layers)]
        pooled = (batch, cfg.num_heads, self.slots * slice_len // K_BLOCK, cfg.head_dim)
        self.pooled_keys = [torch.empty(pooled, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        if is_fp8(store):
            scales = (self.slots, cfg.num_heads)
            self.key_scales = [torch.ones(scales, device=device) for _ in range(cfg.num_layers)]
            self.value_scales = [torch.ones(scales, device=device) for _ in range(cfg.num_layers)]
        self.filled = self.next_slot = self.steps = 0

    def begin_step(self, new_slices: int) -> None:
        """Reserve the slots the current step writes (the oldest ones once the ring is full)."""
        first = self.steps == 0
        if first and new_slices != FIRST_STEP_SLICES:
            raise ValueError(f"the first streaming step takes {FIRST_STEP_SLICES} time slices, got {new_slices}")
        if not first and new_slices != 1:
            raise ValueError(f"streaming steps after the first take 1 time slice, got {new_slices}")
        start = self.next_slot
        self._write = (start * self.slice_len, (start + new_slices) * self.slice_len)
        self.next_slot = (start + new_slices) % self.slots
        self.filled = min(self.filled + new_slices, self.slots)

    def end_step(self) -> None:
        self.steps += 1

    def store(self, block: int, k: torch.Tensor, v: torch.Tensor) -> CachedKV:
        """Write this step's ``(B, H, L, D)`` K/V of ``block`` and its pooled keys; returns what attention
        reads over the filled slots."""
        lo, hi = self._write
        end = self.filled * self.slice_len
        self.pooled_keys[block][:, :, lo // K_BLOCK:hi // K_BLOCK].copy_(pool_blocks(k, K_BLOCK))
        pooled = self.pooled_keys[block][:, :, :end // K_BLOCK]
        keys, values = self.keys[block], self.values[block]
        if not self.key_scales:
            keys[:, :, lo:hi].copy_(k)
            values[:, :, lo:hi].copy_(v)
            return CachedKV(keys[:, :, :end], values[:, :, :end], pooled)
        slots = slice(lo // self.slice_len, hi // self.slice_len)
        if self.fp8_attention:  # values stored transposed: this step's slices are columns
            value_slots, quantize_values = values[:, :, :, lo:hi], _quantize_t
        else:
            value_slots, quantize_values = values[:, :, lo:hi], _quantize
        for target, scales, quantize, x in ((keys[:, :, lo:hi], self.key_scales[block], _quantize, k),
                                            (value_slots, self.value_scales[block], quantize_values, v)):
            quantized, scale = quantize(x, self.slice_len, target.dtype)
            # Copied as 8-byte words: PyTorch copies FP8 into a strided slice one byte per element.
            target.view(torch.int64).copy_(quantized.view(torch.int64))
            scales[slots].copy_(scale)
        filled = slice(0, self.filled)
        if self.fp8_attention:
            fp8 = FP8KeysValues(keys[:, :, :end], values[:, :, :, :end], self.key_scales[block][filled],
                                self.value_scales[block][filled], self.slice_len)
            return CachedKV(fp8.keys, fp8.values_t, pooled, fp8=fp8)
        deq_values = _dequantize(values[:, :, :end], self.value_scales[block][filled], self.slice_len, k.dtype)
        if self.fp8_keys:
            scales = SliceScales(self.key_scales[block][filled], self.slice_len)
            return CachedKV(keys[:, :, :end], deq_values, pooled, scales)
        deq_keys = _dequantize(keys[:, :, :end], self.key_scales[block][filled], self.slice_len, k.dtype)
        return CachedKV(deq_keys, deq_values, pooled)
