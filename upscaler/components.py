"""The loaded model components of one upscaler, kept warm between clips.

The DiT (prepared with the prompt context) and the LQ projection load at start; each decoder
("tcdecoder" for Tiny / Tiny-Long, "wan-vae" for Full) loads on first use, so a miner that only
runs Tiny never reads the 500 MB VAE file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from upscaler.models.config import ModelPreset, load_preset
from upscaler.models.dit import WanDiT
from upscaler.models.fp8 import convert_dit_linears
from upscaler.models.lq_proj_fp8 import convert_lq_convs
from upscaler.settings import UpscalerSettings
from upscaler.weights import (
    WeightFiles,
    load_context,
    load_decoder,
    load_dit,
    load_lq_proj,
    resolve_weights,
)

log = logging.getLogger(__name__)

DECODER_VARIANT = {"tcdecoder": "tiny", "wan-vae": "full"}


@dataclass
class Components:
    """DiT + LQ projection on the device, and the decoders loaded so far."""

    files: WeightFiles
    preset: ModelPreset
    settings: UpscalerSettings
    device: torch.device
    dtype: torch.dtype
    dit: WanDiT
    lq_proj: nn.Module
    _decoders: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Where the weights came from (``hf:<repo>``, a directory, ``random:<preset>``)."""
        return self.files.label

    def decoder(self, kind: str) -> nn.Module:
        """Decoder ``kind`` ("tcdecoder" or "wan-vae"), loaded (strictly) on first use."""
        if kind not in self._decoders:
            files = self.files
            if files.decoder_file_or_none(kind) is None:
                files = resolve_weights(
                    self.settings.weights, self.settings.model_version, DECODER_VARIANT[kind],
                    vae_path=self.settings.vae_path, preset=self.preset.name,
                )
            began = time.perf_counter()
            self._decoders[kind] = load_decoder(files, kind, self.preset, self.device, self.dtype)
            log.info("decoder loaded kind=%s seconds=%.1f", kind, time.perf_counter() - began)
        return self._decoders[kind]


def load_components(settings: UpscalerSettings, device: torch.device, dtype: torch.dtype) -> Components:
    """Resolve the weights named by ``settings.weights`` and load the DiT and LQ projection."""
    files = resolve_weights(
        settings.weights, settings.model_version, "tiny", vae_path=settings.vae_path, preset=settings.model_preset,
    )
    preset = load_preset(files.preset)
    dit = load_dit(files, preset, device, dtype)
    dit.prepare(load_context(files, preset))
    if settings.precision == "fp8":
        convert_dit_linears(dit, settings.fp8_layers, fast_accum=settings.fp8_fast_accum)
    lq_proj = load_lq_proj(files, preset, device, dtype)
    if settings.precision == "fp8":
        convert_lq_convs(lq_proj, settings.fp8_layers)
    return Components(files=files, preset=preset, settings=settings, device=device, dtype=dtype, dit=dit, lq_proj=lq_proj)
