"""Typed upscaler settings, read from ``configs/upscaler.toml`` and overridden by callers."""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields, replace
from typing import Any

from upscaler.configfiles import load_config

VARIANTS = ("tiny", "tiny-long", "full")
DECODERS = ("tcdecoder", "wan-vae")
COLOR_FIXES = ("wavelet", "adain", "none")
KV_CACHE_DTYPES = ("model", "fp8", "fp8-qk")
PRECISIONS = ("bf16", "fp8")

DIT_FP8_GROUPS = ("self_qkv", "self_o", "cross_q", "cross_o", "ffn_up", "ffn_down")  # the DiT linears fp8 can convert
FFN_FUSED = "ffn_fused"
"""With ``ffn_up`` and ``ffn_down``: the up projection's product writes the down projection's e4m3 input itself
(GELU and 1x128 block scales in its epilogue, :mod:`kernels.fp8_ffn_up`), and the down projection multiplies
with those block scales (128x128 weight tiles), instead of a bf16 hidden tensor and a quantising pass over it.
Opt-in until measured faster on a GPU (docs/benchmarks.md)."""
LQ_FP8_GROUPS = ("lq_conv1", "lq_conv2")  # the LQ projection's two convs
FP8_LAYER_GROUPS = DIT_FP8_GROUPS + (FFN_FUSED,) + LQ_FP8_GROUPS
DEFAULT_FP8_LAYERS = DIT_FP8_GROUPS + LQ_FP8_GROUPS


@dataclass(frozen=True)
class SparsitySettings:
    """LCSA parameters (FlashVSR defaults: sparse_ratio 2, kv_ratio 3, local_range 11)."""

    sparse_ratio: float = 2.0
    kv_ratio: int = 3
    local_range: int = 11


@dataclass(frozen=True)
class VariantSettings:
    """What distinguishes Tiny, Tiny-Long and Full: the decoder and how much is buffered."""

    name: str
    decoder: str
    input_prefetch: int
    output_queue: int
    decoder_frames_per_pass: int
    decoder_pass_pixels: int = 0
    """When > 0, frames per decoder pass = max(1, decoder_pass_pixels // model pixels), capped by
    ``decoder_frames_per_pass``: bounds the decoder's full-resolution activations at large sizes."""
    decoder_tile_size: int = 0
    """Decode in spatial tiles of this many output pixels (0: never)..."""
    decoder_tile_overlap: int = 256
    decoder_tile_above_pixels: int = 0
    """...when the model frame has more pixels than this."""

    def frames_per_pass(self, model_pixels: int) -> int:
        """Decoder frames per pass for frames of ``model_pixels``."""
        if self.decoder_pass_pixels <= 0:
            return self.decoder_frames_per_pass
        return max(1, min(self.decoder_frames_per_pass, self.decoder_pass_pixels // model_pixels))

    def tiles_decoder(self, model_pixels: int) -> bool:
        """Whether the decoder runs tiled for frames of ``model_pixels``."""
        return self.decoder_tile_size > 0 and model_pixels > self.decoder_tile_above_pixels


@dataclass(frozen=True)
class TilingSettings:
    """Spatial tiling of the whole model (0 = off), or tiles chosen from free GPU memory (``auto``)."""

    tile_size: int = 0
    tile_overlap: int = 128
    tile_height: int = 0
    """Tile height when it differs from ``tile_size`` (the width): bands; 0 = square tiles."""
    auto: bool = False
    """Choose the tile layout from the usable GPU memory (:mod:`upscaler.tile_plan`): untiled when the
    whole frame fits; ``tile_size``, ``tile_height`` and ``blend_frames`` are then ignored."""
    blend_frames: int = 8
    """Output frames blended on the GPU at a time, beside the last tile (fewer: a smaller blend buffer)."""

    @property
    def enabled(self) -> bool:
        return self.tile_size > 0

    @property
    def height(self) -> int:
        """The tile height in output pixels."""
        return self.tile_height or self.tile_size


@dataclass(frozen=True)
class UpscalerSettings:
    """Everything needed to load the models and run the engine."""

    weights: str = "auto"
    model_version: str = "v1.1"
    device: str = "auto"
    dtype: str = "bf16"
    color_fix: str = "wavelet"
    seed: int = 0
    spatial_multiple: int = 128
    pad_mode: str = "replicate"
    vae_path: str | None = None
    model_preset: str = "wan2.1-1.3b"
    kv_cache_dtype: str = "model"
    precision: str = "bf16"
    fp8_layers: tuple[str, ...] = DEFAULT_FP8_LAYERS
    fp8_fast_accum: bool = True
    """FP8 products accumulate without the periodic fp32 promotion (``use_fast_accum``): 18-26% less time per
    product on an H100, no error beyond FP8's own measured (scripts/measure_fp8.py, docs/benchmarks.md)."""
    fp8_attention: bool = True
    """With ``precision = "fp8"`` and an FP8 cache (``kv_cache_dtype`` "fp8"/"fp8-qk"): attention multiplies
    Q.K^T and P.V in FP8 over the cache as stored (sm_90 GPUs; elsewhere it dequantises the cache as in bf16)."""
    compile: bool = False
    max_vram_gib: float = 0.0
    """Cap this process's GPU memory at this many GiB (0: the whole card): see :mod:`upscaler.vram`."""
    throughput: str = "throughput"
    """The measured-throughput table (a ``configs/`` name or a path) whose ``[[peak]]`` rows the tile layouts
    are planned with (:mod:`upscaler.tile_plan`); the miner's planner reads its speed rows from the same file."""
    sparsity: SparsitySettings = field(default_factory=SparsitySettings)
    tiling: TilingSettings = field(default_factory=TilingSettings)
    variants: dict[str, VariantSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fp8_layers", tuple(self.fp8_layers))  # a TOML or config list is a tuple here

    def variant(self, name: str) -> VariantSettings:
        """Settings of one variant; a clear error for unknown names."""
        if name not in self.variants:
            raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(self.variants)}")
        return self.variants[name]

    def with_overrides(self, **overrides: Any) -> "UpscalerSettings":
        """A copy with the given non-None top-level fields replaced."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> "UpscalerSettings":
        """Raise ``ValueError`` on inconsistent values; returns self."""
        if self.model_version not in ("v1", "v1.1"):
            raise ValueError(f"model_version must be 'v1' or 'v1.1', got {self.model_version!r}")
        if self.dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be bf16, fp16 or fp32, got {self.dtype!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        unknown_layers = set(self.fp8_layers) - set(FP8_LAYER_GROUPS)
        if unknown_layers:
            raise ValueError(f"fp8_layers: unknown {sorted(unknown_layers)}; choose from {FP8_LAYER_GROUPS}")
        if FFN_FUSED in self.fp8_layers and not {"ffn_up", "ffn_down"} <= set(self.fp8_layers):
            raise ValueError(f"fp8_layers: {FFN_FUSED!r} fuses the FFN's two FP8 products: add \"ffn_up\" and "
                             f"\"ffn_down\" too, or remove it")
        for key in ("fp8_fast_accum", "fp8_attention"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")
        if self.pad_mode not in ("replicate", "reflect"):
            raise ValueError(f"pad_mode must be 'replicate' or 'reflect', got {self.pad_mode!r}")
        if self.tiling.enabled and self.tiling.tile_size % self.spatial_multiple:
            raise ValueError(f"tile_size must be a multiple of {self.spatial_multiple}, got {self.tiling.tile_size}")
        if self.tiling.enabled and self.tiling.tile_height % self.spatial_multiple:
            raise ValueError(f"tile_height must be a multiple of {self.spatial_multiple}, got {self.tiling.tile_height}")
        if self.tiling.enabled and not 0 <= self.tiling.tile_overlap < min(self.tiling.tile_size, self.tiling.height):
            raise ValueError("tile_overlap must be >= 0 and smaller than the tile's width and height")
        if self.tiling.blend_frames < 1:
            raise ValueError(f"tiling.blend_frames must be >= 1, got {self.tiling.blend_frames}")
        if not (math.isfinite(self.max_vram_gib) and self.max_vram_gib >= 0):
            raise ValueError(f"max_vram_gib must be a finite number >= 0 (0: the whole GPU), got {self.max_vram_gib}")
        for variant in self.variants.values():
            if variant.decoder not in DECODERS:
                raise ValueError(f"variant {variant.name}: decoder must be one of {DECODERS}")
        return self


def _pick(cls: type, table: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys in configuration: {sorted(unknown)}")
    return dict(table)


def load_settings(config: str = "upscaler", **overrides: Any) -> UpscalerSettings:
    """Read ``configs/upscaler.toml`` (or another file) and apply non-None overrides."""
    raw = load_config(config)
    defaults = _pick(UpscalerSettings, raw.get("defaults", {}))
    variants = {
        name: VariantSettings(name=name, **_pick(VariantSettings, table))
        for name, table in raw.get("variants", {}).items()
    }
    settings = UpscalerSettings(
        **defaults,
        sparsity=SparsitySettings(**_pick(SparsitySettings, raw.get("sparsity", {}))),
        tiling=TilingSettings(**_pick(TilingSettings, raw.get("tiling", {}))),
        variants=variants,
    )
    return settings.with_overrides(**overrides).validate()
