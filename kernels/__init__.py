"""LCSA block-sparse attention for FlashVSR: block-mask builder, Triton kernel, fallbacks.

Public API (docs/ARCHITECTURE.md): :func:`lcsa_block_mask`, :func:`sparse_attention`, :func:`active_backend`.
"""

from kernels.dispatch import active_backend, lcsa_block_mask, set_backend, sparse_attention
from kernels.fp8 import KVScales

__all__ = ["KVScales", "active_backend", "lcsa_block_mask", "set_backend", "sparse_attention"]
