"""Block-sparse attention through PyTorch ``flex_attention`` with a (128, 64) ``BlockMask``.

Every kept block is a *full* block (no per-token mask inside), so the compiled kernel never evaluates the
mask_mod; the mask_mod (a lookup in the block mask) is there for eager flex, which ignores block sparsity
and masks densely. On CUDA the compiled flex kernel is used; elsewhere flex runs eagerly (tests only).
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from kernels.reference import K_BLOCK, Q_BLOCK, check_attention_inputs


def to_flex_block_mask(block_mask: torch.Tensor, q_len: int, kv_len: int) -> BlockMask:
    """flex ``BlockMask`` (BLOCK_SIZE 128 x 64) whose full blocks are exactly the kept blocks."""
    counts = block_mask.sum(dim=-1, dtype=torch.int32)
    # A stable sort on "not kept" puts the kept column indices first, in ascending order.
    indices = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)

    def kept(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return block_mask[b, h, q_idx // Q_BLOCK, kv_idx // K_BLOCK]

    return BlockMask.from_kv_blocks(
        torch.zeros_like(counts),
        torch.zeros_like(indices),
        full_kv_num_blocks=counts,
        full_kv_indices=indices,
        BLOCK_SIZE=(Q_BLOCK, K_BLOCK),
        mask_mod=kept,
        seq_lengths=(q_len, kv_len),
    )


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def sparse_attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """Block-sparse attention with flex_attention; query blocks without kept key blocks give zeros."""
    check_attention_inputs(q, k, v, block_mask)
    mask = to_flex_block_mask(block_mask, q.shape[2], k.shape[2])
    attend = _compiled_flex() if q.is_cuda else flex_attention
    return attend(q, k, v, block_mask=mask, scale=scale)
