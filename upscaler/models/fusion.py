"""Optional ``torch.compile`` of memory-bound element-wise chains: on the GPU the DiT's last gated
residual add, the FP8 K/V cache's quantisation and dequantisation, the cross-attention's q RMSNorm and
the wavelet colour fix; the DiT's layer norms and q/k norm + RoPE only where their Triton kernels
(:mod:`kernels.layer_norm`, :mod:`kernels.norm_rope`) do not run.

At 4K a DiT block spends more time in element-wise passes over its 65k x 1536 activations than in its
matrix products; compiling these small pure functions fuses each chain into one kernel. Off by
default (``compile = false`` in configs/upscaler.toml); the eager functions are what runs otherwise,
so both paths compute the same expressions.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., torch.Tensor])

_state = {"enabled": False}
RECOMPILE_LIMIT = 64  # shapes differ per resolution and between the first and later steps


def set_enabled(enabled: bool) -> None:
    """Turn compilation of the :func:`fusable` functions on or off for this process."""
    if enabled:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    _state["enabled"] = enabled


def fusable(fn: F) -> F:
    """Run ``fn`` eagerly, or compiled (static shapes, one graph) once :func:`set_enabled` is on."""
    compiled: list[Callable[..., torch.Tensor]] = []

    @functools.wraps(fn)
    def call(*args: object) -> torch.Tensor:
        if not _state["enabled"]:
            return fn(*args)
        if not compiled:
            compiled.append(torch.compile(fn, dynamic=False, fullgraph=True))
        return compiled[0](*args)

    return call  # type: ignore[return-value]
