"""LCSA block-sparse attention for FlashVSR: block-mask builder, Triton kernel, fallbacks.

Public API (docs/ARCHITECTURE.md): :func:`lcsa_block_mask`, :func:`sparse_attention`, :func:`active_backend`.
"""

from kernels.dispatch import active_backend, lcsa_block_mask, set_backend, sparse_attention

__all__ = ["active_backend", "lcsa_block_mask", "set_backend", "sparse_attention"]
