"""FP8 (e4m3) K/V with per-(slot, head) scales: the layout of the DiT's FP8 K/V cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn


@dataclass(frozen=True)
class KVScales:
    """Dequantisation scales of FP8 K/V: ``keys``/``values`` float32 ``(slots, H)``, one per
    ``tokens`` consecutive keys (a multiple of 64) and head: the real value is ``fp8 * scale``."""

    keys: torch.Tensor
    values: torch.Tensor
    tokens: int

    def dequantize(self, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, L, D)`` FP8 K/V as ``dtype`` tensors (for the backends that cannot read FP8)."""
        return dequantize(k, self.keys, self.tokens, dtype), dequantize(v, self.values, self.tokens, dtype)


def quantize(x: torch.Tensor, tokens: int, dtype: torch.dtype = FP8_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (B, H, n*tokens, D)`` -> FP8 values and float32 scales ``(n, H)``, one per slot and head."""
    b, h, length, d = x.shape
    slots = x.view(b, h, length // tokens, tokens, d)
    amax = slots.abs().amax(dim=(0, 3, 4)).float().clamp_min(1e-12)  # (H, n)
    scale = amax / torch.finfo(dtype).max
    values = (slots / scale.to(x.dtype)[None, :, :, None, None]).to(dtype).view(b, h, length, d)
    return values, scale.t().contiguous()


def dequantize(x: torch.Tensor, scales: torch.Tensor, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize` for the first ``scales.shape[0]`` slots of ``x``."""
    b, h, length, d = x.shape
    slots = x.reshape(b, h, length // tokens, tokens, d).to(dtype)
    return (slots * scales.t().to(dtype)[None, :, :, None, None]).reshape(b, h, length, d)
