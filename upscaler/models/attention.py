"""Wan2.1 attention layers: LCSA self-attention over the streaming cache, cached cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from upscaler.models.fusion import fusable
from upscaler.models.kv_cache import DiTStreamCache
from upscaler.models.rope import apply_rope


class RMSNorm(nn.Module):
    """Wan's RMSNorm (normalises in fp32, scales in the input dtype); key ``weight``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


@fusable
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in fp32, scale in the input dtype (as Wan)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def _norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
    """RMSNorm of a q/k projection ``(B, L, dim)`` then RoPE, as ``(B, H, L, D)``: one Triton pass on
    CUDA (:mod:`kernels.norm_rope`), PyTorch elsewhere."""
    if x.is_cuda:
        from kernels.norm_rope import rms_norm_rope, supports

        if supports(x, heads, cos):
            return rms_norm_rope(x, weight, eps, heads, cos, sin)
    return _norm_rope_torch(x, weight, eps, heads, cos, sin)


@fusable
def _norm_rope_torch(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, cos: torch.Tensor,
                     sin: torch.Tensor) -> torch.Tensor:
    """:func:`_norm_rope` in PyTorch (compiled with the other element-wise chains when enabled)."""
    b, length, dim = x.shape
    normed = rms_norm.__wrapped__(x, weight, eps).view(b, length, heads, dim // heads)
    return apply_rope(normed, cos, sin).transpose(1, 2)


@dataclass(frozen=True)
class LCSAStep:
    """What every block's self-attention needs for one streaming step (all host-side values)."""

    cos: torch.Tensor
    sin: torch.Tensor
    cache: DiTStreamCache
    topk: int
    local_range: int
    grid: tuple[int, int]


class _Projections(nn.Module):
    """The q/k/v/o projections and q/k RMSNorms both Wan attention layers hold (their checkpoint keys)."""

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


class SelfAttention(_Projections):
    """Self-attention with qk RMSNorm, 3D RoPE and the LCSA block-sparse mask (keys q/k/v/o/norm_q/norm_k)."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__(dim, num_heads, eps)
        # q, k and v as one product of their stacked weights ((B, L, dim) -> (B, L, 3 * dim)), where
        # upscaler.models.fp8.convert_dit_linears sets it (and drops q, k and v).
        self.qkv: nn.Module | None = None

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv is None:
            return self.q(x), self.k(x), self.v(x)
        return self.qkv(x).split(self.num_heads * self.head_dim, dim=-1)  # views of one (B, L, 3 * dim) product

    def forward(self, x: torch.Tensor, block: int, step: LCSAStep) -> torch.Tensor:
        """``x`` ``(B, L, dim)`` in window order; writes this step's K/V into the cache."""
        b, length, dim = x.shape
        heads = (b, length, self.num_heads, self.head_dim)
        q, k, v = self._project(x)
        q = _norm_rope(q, self.norm_q.weight, self.norm_q.eps, self.num_heads, step.cos, step.sin)
        k = _norm_rope(k, self.norm_k.weight, self.norm_k.eps, self.num_heads, step.cos, step.sin)
        v = v.view(heads).transpose(1, 2)
        cached = step.cache.store(block, k, v)
        mask = kernels.lcsa_block_mask(q, cached.keys, local_range=step.local_range, topk=step.topk, grid=step.grid,
                                       k_pooled=cached.pooled_keys)
        if cached.fp8 is not None:
            out = kernels.sparse_attention_fp8(q, cached.fp8, mask)
        else:
            out = kernels.sparse_attention(q, cached.keys, cached.values, mask, key_scales=cached.key_scales)
        return self.o(out.transpose(1, 2).reshape(b, length, dim))


class CrossAttention(_Projections):
    """Cross-attention to the fixed prompt; its K/V are computed once by :meth:`project_context`."""

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
