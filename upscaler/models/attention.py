"""Wan2.1 attention layers: LCSA self-attention over the streaming cache, cached cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from upscaler.models.kv_cache import DiTStreamCache
from upscaler.models.rope import apply_rope


class RMSNorm(nn.Module):
    """Wan's RMSNorm (normalises in fp32, scales in the input dtype); key ``weight``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


@dataclass(frozen=True)
class LCSAStep:
    """What every block's self-attention needs for one streaming step (all host-side values)."""

    cos: torch.Tensor
    sin: torch.Tensor
    cache: DiTStreamCache
    topk: int
    local_range: int
    grid: tuple[int, int]


class SelfAttention(nn.Module):
    """Self-attention with qk RMSNorm, 3D RoPE and the LCSA block-sparse mask (keys q/k/v/o/norm_q/norm_k)."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, block: int, step: LCSAStep) -> torch.Tensor:
        """``x`` ``(B, L, dim)`` in window order; writes this step's K/V into the cache."""
        b, length, dim = x.shape
        heads = (b, length, self.num_heads, self.head_dim)
        q = apply_rope(self.norm_q(self.q(x)).view(heads), step.cos, step.sin).transpose(1, 2)
        k = apply_rope(self.norm_k(self.k(x)).view(heads), step.cos, step.sin).transpose(1, 2)
        v = self.v(x).view(heads).transpose(1, 2)
        keys, values = step.cache.store(block, k, v)
        keys, values = keys.to(q.dtype), values.to(q.dtype)
        mask = kernels.lcsa_block_mask(q, keys, local_range=step.local_range, topk=step.topk, grid=step.grid)
        out = kernels.sparse_attention(q, keys, values, mask)
        return self.o(out.transpose(1, 2).reshape(b, length, dim))


class CrossAttention(nn.Module):
    """Cross-attention to the fixed prompt; its K/V are computed once by :meth:`project_context`."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V ``(B, H, S, D)`` (contiguous) of the embedded context ``(B, S, dim)``."""
        k = self._heads(self.norm_k(self.k(context))).contiguous()
        v = self._heads(self.v(context)).contiguous()
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, length, dim = x.shape
        q = self._heads(self.norm_q(self.q(x)))
        k, v = (t.expand(b, -1, -1, -1) for t in kv)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, length, dim))
