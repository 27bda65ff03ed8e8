"""The one streaming engine shared by every FlashVSR variant.

For each step of the chunk schedule (:mod:`upscaler.schedule`) the engine feeds the LQ projection,
runs one DiT step against the per-block K/V cache, decodes the new latents with the variant's
decoder, crops the padding, applies the colour fix and yields the finished output frames. Nothing
grows with the clip: LQ frames, caches and decoder state are bounded by the step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch

from upscaler import schedule
from upscaler.color import ColorFix
from upscaler.errors import UpscaleCancelled
from upscaler.lq_frames import LQFrames
from upscaler.models.config import SparsityParams
from upscaler.timing import StageTimer

log = logging.getLogger(__name__)

LATENT_CHANNELS = 16
LATENT_STRIDE = 8

NoiseFn = Callable[[int, tuple[int, ...]], torch.Tensor]


class StreamingDecoder(Protocol):
    """What the engine needs from a decoder (TCDecoder, Wan VAE decoder, or a tiled wrapper)."""

    def new_state(self, *, frames_per_pass: int) -> object: ...

    def decode(self, latents: torch.Tensor, *args: object) -> torch.Tensor: ...


@dataclass
class EngineModels:
    """The loaded modules one engine drives."""

    dit: torch.nn.Module
    lq_proj: torch.nn.Module
    decoder: StreamingDecoder
    decoder_kind: str  # "tcdecoder" (conditioned on LQ frames) or "wan-vae"


@dataclass(frozen=True)
class EngineOptions:
    """Per-run knobs of the engine."""

    sparsity: SparsityParams
    color_fix: str = "wavelet"
    seed: int = 0
    decoder_frames_per_pass: int = 4
    kv_cache_dtype: torch.dtype | None = None  # None: the model dtype
    fp8_keys: bool = False  # FP8 cache only: attention multiplies Q by the keys as stored (FP8 Q.K^T)
    fp8_attention: bool = False  # FP8 cache only: Q.K^T and P.V in FP8 over the keys and values as stored


def seeded_noise(device: torch.device, dtype: torch.dtype, seed: int) -> NoiseFn:
    """Noise drawn step by step from one seeded generator (deterministic per seed)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def draw(step_index: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    return draw


def _concat_features(acc: list[torch.Tensor] | None, new: Sequence[torch.Tensor] | None) -> list[torch.Tensor] | None:
    if new is None:
        return acc
    if acc is None:
        return list(new)
    return [torch.cat([a, b], dim=1) for a, b in zip(acc, new)]


class StreamingEngine:
    """Runs FlashVSR over a stream of LQ frames and yields output frames as soon as they are final."""

    def __init__(self, models: EngineModels, options: EngineOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.models = models
        self.options = options
        self.device = device
        self.dtype = dtype
        self.color_fix = ColorFix(options.color_fix)

    @torch.inference_mode()
    def run(
        self,
        lq: LQFrames,
        out_size: tuple[int, int],
        model_size: tuple[int, int],
        *,
        timer: StageTimer,
        noise: NoiseFn | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield output frames ``(1, 3, t, out_h, out_w)`` in [-1, 1] on the device, in order.

        ``lq`` holds the clip's frames at ``model_size`` (output size padded up); exactly one output
        frame is produced per input frame.
        """
        out_w, out_h = out_size
        model_w, model_h = model_size
        noise = noise or seeded_noise(self.device, self.dtype, self.options.seed)
        dit, lq_proj, decoder = self.models.dit, self.models.lq_proj, self.models.decoder
        lq_proj.reset()
        cache = dit.new_cache(self.options.kv_cache_dtype, fp8_keys=self.options.fp8_keys,
                              fp8_attention=self.options.fp8_attention)
        state = decoder.new_state(frames_per_pass=self.options.decoder_frames_per_pass)
        latent_hw = (model_h // LATENT_STRIDE, model_w // LATENT_STRIDE)
        index = 0
        while True:
            if should_cancel is not None and should_cancel():
                raise UpscaleCancelled("upscale cancelled by the caller")
            step = schedule.step(index)
            with timer.stage("lq_proj"):
                features = None
                for start, end in step.lq_calls:
                    features = _concat_features(features, lq_proj.stream(lq.get(start, end)))
            with timer.stage("dit"):
                shape = (1, LATENT_CHANNELS, step.latent_frames, *latent_hw)
                latents = dit.stream_step(noise(index, shape), features, cache, step=index, sparsity=self.options.sparsity)
            out_start, out_end = step.output
            cond = lq.get(out_start, out_end)
            with timer.stage("decoder"):
                if self.models.decoder_kind == "tcdecoder":
                    frames = decoder.decode(latents, cond, state)
                else:
                    frames = decoder.decode(latents, state)
            if frames.shape[2] != out_end - out_start:
                raise RuntimeError(
                    f"{self.models.decoder_kind} returned {frames.shape[2]} frames at step {index}, "
                    f"the schedule expects {out_end - out_start}"
                )
            frames = frames[:, :, :, :out_h, :out_w]
            with timer.stage("color_fix"):
                frames = self.color_fix(frames, cond[:, :, :, :out_h, :out_w])
            clip_frames = lq.clip_frames
            keep = out_end - out_start if clip_frames is None else max(0, min(out_end, clip_frames) - out_start)
            if keep:
                yield frames[:, :, :keep]
            lq.release_before(out_end)
            if clip_frames is not None and out_end >= clip_frames:
                return
            index += 1
