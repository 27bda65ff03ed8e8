"""Model shape configurations (dataclasses) and the presets defined in ``configs/models.toml``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from upscaler.configfiles import load_config

MODELS_CONFIG = "models"


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1 DiT shape (defaults: Wan2.1-T2V-1.3B as used by FlashVSR)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    window: tuple[int, int, int] = (2, 8, 8)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def window_tokens(self) -> int:
        """Tokens per LCSA window (one attention block)."""
        t, h, w = self.window
        return t * h * w


@dataclass(frozen=True)
class LQProjConfig:
    """LQ projection (``Buffer_LQ4x_Proj`` / ``Causal_LQ4x_Proj``) shape."""

    in_dim: int = 3
    hidden_dim1: int = 2048
    hidden_dim2: int = 3072
    out_dim: int = 1536
    layer_num: int = 1
    unshuffle: int = 16


@dataclass(frozen=True)
class TCDecoderConfig:
    """Tiny conditional decoder (TAEHV layout) shape; its input has latent + cond channels."""

    channels: tuple[int, ...] = (512, 256, 128, 128)
    latent_channels: int = 16
    cond_channels: int = 768


@dataclass(frozen=True)
class VAEDecoderConfig:
    """Wan2.1 VAE decoder (``Decoder3d``) shape."""

    z_dim: int = 16
    dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_upsample: tuple[bool, ...] = (False, True, True)


@dataclass(frozen=True)
class ModelPreset:
    """All model shapes of one preset."""

    name: str
    dit: DiTConfig
    lq_proj: LQProjConfig
    tcdecoder: TCDecoderConfig
    vae_decoder: VAEDecoderConfig


@dataclass(frozen=True)
class SparsityParams:
    """LCSA parameters of one run (FlashVSR defaults: sparse_ratio 2, kv_ratio 3, local_range 11)."""

    sparse_ratio: float = 2.0
    kv_ratio: int = 3
    local_range: int = 11


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} for {cls.__name__}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return cls(**values)


@lru_cache(maxsize=None)
def load_preset(name: str) -> ModelPreset:
    """The preset ``name`` (``"wan2.1-1.3b"`` or ``"small"``) from ``configs/models.toml``."""
    presets = load_config(MODELS_CONFIG).get("presets", {})
    if name not in presets:
        raise ValueError(f"unknown model preset {name!r}; configs/models.toml defines {', '.join(presets)}")
    table = presets[name]
    parts = {
        "dit": DiTConfig,
        "lq_proj": LQProjConfig,
        "tcdecoder": TCDecoderConfig,
        "vae_decoder": VAEDecoderConfig,
    }
    missing = set(parts) - set(table)
    if missing:
        raise ValueError(f"model preset {name!r} lacks tables {sorted(missing)}")
    built = {key: _build(cls, table[key], f"presets.{name}.{key}") for key, cls in parts.items()}
    return ModelPreset(name=name, **built)


def preset_names() -> tuple[str, ...]:
    """Names of the presets defined in ``configs/models.toml``."""
    return tuple(load_config(MODELS_CONFIG).get("presets", {}))
