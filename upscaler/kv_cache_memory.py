"""Size of the DiT's streaming K/V cache, from the model's shapes (torch-free: tile layouts are priced with it).

Each of the DiT's blocks keeps a ring of :func:`ring_slots` time slices of K and V
(:class:`upscaler.models.kv_cache.DiTStreamCache`); a slice is ``window[0]`` latent frames of
``(h / ph) * (w / pw)`` tokens of ``dim`` values, the latent being the model frame over
:data:`LATENT_STRIDE`. At 4K (model frame 3840x2176) that is 4 slices of 65,280 tokens in each of 30
blocks of 12 heads x 128: 44.8 GiB stored in bf16, 22.4 GiB in FP8, linear in the model frame's pixels.
FP8 storage adds float32 scales per slice and head (kilobytes, left out).
"""

from __future__ import annotations

from upscaler.models.config import DiTConfig

MIN_RETAINED_SLICES = 2
LATENT_STRIDE = 8  # model pixels per latent pixel, each axis
ELEMENT_BYTES = {"model": 2, "fp8": 1, "fp8-qk": 1}
"""Bytes per stored value of each ``kv_cache_dtype`` ("model": bf16 or fp16, the GPU dtypes; "fp8-qk"
stores the FP8 cache and differs only in how Q.K^T is multiplied)."""


def ring_slots(kv_ratio: float) -> int:
    """Slices a block's ring must hold: the retained cache plus the current step's slice."""
    return max(int(kv_ratio), MIN_RETAINED_SLICES) + 1


def slice_tokens(latent_hw: tuple[int, int], cfg: DiTConfig) -> int:
    """Tokens in one time slice (``window[0]`` latent frames) of a ``latent_hw`` latent."""
    _, ph, pw = cfg.patch_size
    return cfg.window[0] * (latent_hw[0] // ph) * (latent_hw[1] // pw)


def kv_cache_bytes(cfg: DiTConfig, latent_hw: tuple[int, int], kv_ratio: float, element_bytes: int,
                   batch: int = 1) -> int:
    """Bytes of a fully allocated cache: K and V of every block, ``element_bytes`` per value (the pooled
    keys, 1/64 of K in the model dtype, are left out)."""
    return 2 * cfg.num_layers * batch * cfg.dim * ring_slots(kv_ratio) * slice_tokens(latent_hw, cfg) * element_bytes


def kv_cache_gib_per_mpx(cfg: DiTConfig, kv_ratio: float, kv_cache_dtype: str) -> float:
    """GiB of the cache per million model-frame pixels, stored as ``kv_cache_dtype`` (exact for frames whose
    sides are multiples of the patch times :data:`LATENT_STRIDE`)."""
    if kv_cache_dtype not in ELEMENT_BYTES:
        raise ValueError(f"unknown K/V cache dtype {kv_cache_dtype!r}; choose one of {', '.join(ELEMENT_BYTES)}")
    _, ph, pw = cfg.patch_size
    one_token = kv_cache_bytes(cfg, (ph, pw), kv_ratio, ELEMENT_BYTES[kv_cache_dtype])
    return one_token / (ph * pw * LATENT_STRIDE**2) * 1e6 / 1024**3
