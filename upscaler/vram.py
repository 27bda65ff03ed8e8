"""A per-process GPU memory cap (``--max-vram``, ``max_vram_gib``), and the memory queries that respect it.

``apply_cap(device, gib)`` makes a large GPU behave as a smaller card: the caching allocator is limited
to ``gib`` GiB (``torch.cuda.set_per_process_memory_fraction`` of the card's total), and
:func:`usable_bytes`, which tile planning and the miner's workers use instead of
``torch.cuda.mem_get_info``, never reports more than the cap leaves. Without a cap it reports the card.
:func:`capped` holds a cap for a block (a benchmark case) and restores the one before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

GIB = 1024**3

_caps: dict[int, int] = {}  # device index -> cap in bytes


def cap_fraction(cap_bytes: int, total_bytes: int) -> float:
    """The allocator fraction of a ``total_bytes`` card that allows ``cap_bytes`` (at most 1)."""
    if cap_bytes <= 0:
        raise ValueError(f"a memory cap must be positive, got {cap_bytes} bytes")
    return min(1.0, cap_bytes / total_bytes)


def capped_usable(real_free: int, reserved: int, cap_bytes: int | None) -> int:
    """Bytes this process may hold in all: what it holds (``reserved``) plus what the card has free,
    at most the cap."""
    usable = real_free + reserved
    return usable if cap_bytes is None else min(usable, cap_bytes)


def apply_cap(device: torch.device, gib: float) -> None:
    """Cap this process's allocator on CUDA ``device`` at ``gib`` GiB, replacing any cap before (0, or
    at least the card's total memory: no cap, the latter logged; off CUDA: no effect). Lowering a cap
    does not free what is already held: empty the allocator's cache first."""
    if device.type != "cuda":
        return
    index = torch.cuda.current_device() if device.index is None else device.index
    total = torch.cuda.get_device_properties(index).total_memory
    cap = int(gib * GIB)
    if cap <= 0 or cap >= total:
        if cap > 0:
            log.warning("max_vram_gib=%.1f is not below this GPU's %.1f GiB: no cap", gib, total / GIB)
        if _caps.pop(index, None) is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
            log.info("gpu memory cap removed device=cuda:%d", index)
        return
    torch.cuda.set_per_process_memory_fraction(cap_fraction(cap, total), index)
    _caps[index] = cap
    log.info("gpu memory capped device=cuda:%d cap_gib=%.1f total_gib=%.1f", index, gib, total / GIB)


def cap_bytes(device: torch.device) -> int | None:
    """The cap applied on ``device`` (None: none)."""
    if device.type != "cuda":
        return None
    return _caps.get(torch.cuda.current_device() if device.index is None else device.index)


@contextmanager
def capped(device: torch.device, gib: float) -> Iterator[None]:
    """Exactly ``gib`` GiB as the cap on ``device`` inside the block (0: none), whatever cap was applied
    before; that cap again afterwards."""
    before = cap_bytes(device)
    apply_cap(device, gib)
    try:
        yield
    finally:
        apply_cap(device, 0 if before is None else before / GIB)


def usable_bytes(device: torch.device) -> int | None:
    """Bytes this process may use on ``device`` in all, the models it holds included (None off CUDA)."""
    if device.type != "cuda":
        return None
    real_free, _total = torch.cuda.mem_get_info(device)
    return capped_usable(int(real_free), torch.cuda.memory_reserved(device), cap_bytes(device))
