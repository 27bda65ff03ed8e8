"""Backend choice for block-sparse attention: Triton -> flex_attention -> dense SDPA.

The backend is chosen once (first use) and logged; ``FLASHVSR_ATTENTION=triton|flex|sdpa`` forces one.
Tensors on the CPU always take the SDPA path, whatever backend is active.

``dense`` (benchmarks only, never chosen automatically) ignores the mask and runs full attention with
PyTorch's flash SDPA: the cost of attention without LCSA sparsity, as a speed baseline.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os

import torch

from kernels.reference import (
    FP8KeysValues,
    SliceScales,
    check_key_dtype,
    dequantize_slices,
    lcsa_block_mask_torch,
    sparse_attention_sdpa,
)

logger = logging.getLogger(__name__)

BACKENDS = ("triton", "flex", "sdpa", "dense")
ENV_VAR = "FLASHVSR_ATTENTION"


def _flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def select_backend(forced: str | None, cuda: bool, triton: bool, flex: bool) -> tuple[str, str]:
    """Pure selection rule: returns (backend, reason). ``forced`` is the env value (may be empty)."""
    if forced:
        name = forced.strip().lower()
        if name not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={forced!r}: expected one of {', '.join(BACKENDS)}")
        return name, f"forced by {ENV_VAR}"
    if not cuda:
        return "sdpa", "no CUDA device"
    if triton:
        return "triton", "CUDA device and Triton available"
    if flex:
        return "flex", "Triton unavailable, flex_attention available"
    return "sdpa", "neither Triton nor flex_attention available"


def set_backend(name: str | None) -> None:
    """Force backend ``name`` for this process from now on (None: choose again from the environment)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {', '.join(BACKENDS)}")
    active_backend.cache_clear()
    if name is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = name


@functools.cache
def active_backend() -> str:
    """The attention backend of this process: "triton" | "flex" | "sdpa" (chosen once, logged)."""
    cuda = torch.cuda.is_available()
    name, reason = select_backend(
        os.environ.get(ENV_VAR),
        cuda=cuda,
        triton=importlib.util.find_spec("triton") is not None,
        flex=_flex_available(),
    )
    device = torch.cuda.get_device_name() if cuda else "cpu"
    logger.info("attention backend selected: backend=%s reason=%r device=%r torch=%s triton=%s", name, reason, device,
                torch.__version__, _triton_version())
    return name


def _triton_version() -> str:
    """The installed Triton's version (read from its metadata: no import), or "none"."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def backend_for(tensor: torch.Tensor) -> str:
    """Backend used for a call on ``tensor``: the active one on CUDA, "sdpa" on other devices."""
    return active_backend() if tensor.is_cuda else "sdpa"


def lcsa_block_mask(
    q_windows: torch.Tensor, k_windows: torch.Tensor, *, local_range: int, topk: int, grid: tuple[int, int],
    k_pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """LCSA block mask ``(B, H, Lq/128, Lk/64)`` bool (see :mod:`kernels.reference` for semantics).

    ``k_pooled`` ``(B, H, Lk/64, D)``: the keys already mean-pooled per 64 tokens (the streaming cache
    pools each slice once, when it is written); ``k_windows`` then only gives the shape (any dtype).
    PyTorch ops on every backend: on an H100 they are as fast as a Triton radix-select variant we
    measured (docs/attention.md), and they are the reference semantics bit for bit.
    """
    return lcsa_block_mask_torch(q_windows, k_windows, local_range=local_range, topk=topk, grid=grid,
                                 k_pooled=k_pooled)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, *, scale: float | None = None,
    key_scales: SliceScales | None = None,
) -> torch.Tensor:
    """Block-sparse attention ``(B, H, Lq, D)`` over kept (128 query x 64 key) blocks, in q's dtype.

    A query block with no kept key block gives zeros. ``k`` may be FP8 (e4m3) with ``key_scales``: the
    Triton kernel then runs Q.K^T in FP8, other backends dequantise ``k`` to q's dtype first.
    """
    backend = backend_for(q)
    if backend == "triton":
        from kernels.triton_sparse import sparse_attention_triton

        return sparse_attention_triton(q, k, v, block_mask, scale=scale, key_scales=key_scales)
    if check_key_dtype(q, k, v, key_scales):
        k = dequantize_slices(k, key_scales.scales, key_scales.slice_len, q.dtype)
    if backend == "flex":
        from kernels.flex import sparse_attention_flex

        return sparse_attention_flex(q, k, v, block_mask, scale=scale)
    if backend == "dense" and q.is_cuda:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    return sparse_attention_sdpa(q, k, v, block_mask, scale=scale)


def fp8_attention_available(device: torch.device) -> bool:
    """Whether :func:`sparse_attention_fp8` multiplies in FP8 on ``device`` (an sm_90 GPU with the Triton
    backend and the warp-specialised kernels on); elsewhere it dequantises the cache first."""
    if device.type != "cuda" or active_backend() != "triton":
        return False
    from kernels.triton_sparse import fp8_kernel_available

    return fp8_kernel_available(device)


def sparse_attention_fp8(q: torch.Tensor, kv: FP8KeysValues, block_mask: torch.Tensor, *,
                         scale: float | None = None) -> torch.Tensor:
    """:func:`sparse_attention` over the FP8 cache as stored (:class:`~kernels.reference.FP8KeysValues`):
    Q.K^T and P.V in FP8 where :func:`fp8_attention_available`, else over the dequantised keys and values."""
    if backend_for(q) == "triton":
        from kernels.triton_sparse import sparse_attention_fp8_cache

        return sparse_attention_fp8_cache(q, kv, block_mask, scale=scale)
    k, v = kv.dequantized(q.dtype)
    return sparse_attention(q, k, v, block_mask, scale=scale)
