"""LCSA block-sparse attention for FlashVSR: block-mask builder, Triton kernel, fallbacks.

Public API (docs/ARCHITECTURE.md): :func:`lcsa_block_mask`, :func:`sparse_attention`,
:func:`sparse_attention_fp8` (over the FP8 cache as stored), :func:`fp8_attention_available`, :func:`active_backend`.
"""

from kernels.dispatch import (
    active_backend,
    fp8_attention_available,
    lcsa_block_mask,
    set_backend,
    sparse_attention,
    sparse_attention_fp8,
)
from kernels.reference import FP8KeysValues

__all__ = ["FP8KeysValues", "active_backend", "fp8_attention_available", "lcsa_block_mask", "set_backend",
           "sparse_attention", "sparse_attention_fp8"]
