"""FlashVSR model modules with the official checkpoint key names."""

from upscaler.models.config import (
    DiTConfig,
    LQProjConfig,
    ModelPreset,
    SparsityParams,
    TCDecoderConfig,
    VAEDecoderConfig,
    load_preset,
)

__all__ = [
    "DiTConfig",
    "LQProjConfig",
    "ModelPreset",
    "SparsityParams",
    "TCDecoderConfig",
    "VAEDecoderConfig",
    "load_preset",
]
