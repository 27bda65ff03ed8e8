"""The upscaler's public entry point: load once, upscale many files.

    upscaler = Upscaler.load(load_settings(weights="random-small", device="cpu"))
    report = upscaler.upscale_file("in.mp4", "out.mp4", width=640, height=360)
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch

import kernels
from upscaler.engine import EngineModels, EngineOptions, StreamingEngine
from upscaler.frame_source import lq_batches
from upscaler.geometry import Geometry
from upscaler.lq_frames import LQFrames
from upscaler.models import fusion
from upscaler.models.config import SparsityParams
from upscaler.report import Progress, UpscaleReport
from upscaler.resize import frames_to_host
from upscaler.settings import TilingSettings, UpscalerSettings, VariantSettings
from upscaler.components import load_components
from upscaler import vram
from upscaler.geometry import round_up
from upscaler.tile_plan import MemoryModel, TileLayout, choose_layout
from upscaler.models.tiled_decode import TiledDecoder, TileSpec
from upscaler.tiled import TiledRun, run_tiles
from upscaler.timing import StageTimer
from upscaler.video import FrameReader, FrameWriter, probe

log = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype; the CPU always runs fp32 (bf16/fp16 convolutions are slow or missing there)."""
    return torch.float32 if device.type == "cpu" else _DTYPES[name]


def _fp8_products_supported(device: torch.device) -> bool:
    """Whether attention can run Q.K^T in FP8 on ``device`` (off CUDA the keys are dequantised anyway)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def _fp8_attention(settings: UpscalerSettings, device: torch.device) -> tuple[bool, str]:
    """Whether attention runs its products in FP8 (``precision = "fp8"``, ``fp8_attention``, an FP8 cache and
    a GPU the FP8 kernel runs on), and why (one line for the load log)."""
    if settings.precision != "fp8" or not settings.fp8_attention:
        return False, "off (precision or fp8_attention)"
    if not settings.kv_cache_dtype.startswith("fp8"):
        return False, f'off: kv_cache_dtype={settings.kv_cache_dtype} (it reads the FP8 cache: set kv_cache_dtype = "fp8")'
    if not kernels.fp8_attention_available(device):
        return False, (f"off on {device}: its kernel needs an sm_90 GPU and the warp-specialised kernels; attention "
                       "reads the dequantised cache")
    return True, "on: Q.K^T and P.V in e4m3 over the FP8 cache as stored"


class Upscaler:
    """Holds the loaded models (kept warm) and runs upscales with them."""

    def __init__(self, settings: UpscalerSettings, device: torch.device, dtype: torch.dtype) -> None:
        self.settings = settings
        self.device = device
        self.dtype = dtype
        vram.apply_cap(device, settings.max_vram_gib)
        self._components = load_components(settings, device, dtype)
        self._memory_model: MemoryModel | None = None
        if settings.kv_cache_dtype == "fp8-qk" and not _fp8_products_supported(device):
            log.warning("kv_cache_dtype=fp8-qk: this GPU has no FP8 matrix products (compute capability < 8.9); "
                        "storing the cache in FP8 and multiplying in %s", str(dtype).removeprefix("torch."))
        if settings.precision == "fp8":
            log.info("fp8 attention: %s", _fp8_attention(settings, device)[1])

    @property
    def fp8_attention_active(self) -> bool:
        """Whether this upscaler's attention multiplies in FP8 (see ``UpscalerSettings.fp8_attention``)."""
        return _fp8_attention(self.settings, self.device)[0]

    @classmethod
    def load(cls, settings: UpscalerSettings) -> "Upscaler":
        """Resolve the device and weights and load the DiT and LQ projection (decoders load on first use)."""
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        fusion.set_enabled(settings.compile and device.type == "cuda")
        began = time.perf_counter()
        upscaler = cls(settings, device, dtype)
        log.info(
            "upscaler loaded weights=%s version=%s device=%s dtype=%s seconds=%.1f",
            upscaler.weights_label, settings.model_version, device, str(dtype).removeprefix("torch."),
            time.perf_counter() - began,
        )
        return upscaler

    @property
    def weights_label(self) -> str:
        """Where the weights came from (a path, or ``random``/``random-small``)."""
        return self._components.label

    def engine(self, variant: VariantSettings, model_pixels: int) -> StreamingEngine:
        """The streaming engine configured for ``variant`` at frames of ``model_pixels`` (the decoder
        is loaded on first use and tiled when the variant asks for it at that size)."""
        decoder = self._components.decoder(variant.decoder)
        if variant.tiles_decoder(model_pixels):
            margin = variant.decoder_tile_overlap // 4
            decoder = TiledDecoder(decoder, TileSpec.from_pixels(variant.decoder_tile_size, variant.decoder_tile_overlap, margin))
        models = EngineModels(
            dit=self._components.dit, lq_proj=self._components.lq_proj, decoder=decoder, decoder_kind=variant.decoder,
        )
        sparsity = SparsityParams(
            sparse_ratio=self.settings.sparsity.sparse_ratio,
            kv_ratio=self.settings.sparsity.kv_ratio,
            local_range=self.settings.sparsity.local_range,
        )
        fp8_attention = self.fp8_attention_active
        options = EngineOptions(
            sparsity=sparsity, color_fix=self.settings.color_fix, seed=self.settings.seed,
            decoder_frames_per_pass=variant.frames_per_pass(model_pixels),
            kv_cache_dtype=torch.float8_e4m3fn if self.settings.kv_cache_dtype.startswith("fp8") else None,
            fp8_keys=(self.settings.kv_cache_dtype == "fp8-qk" and _fp8_products_supported(self.device)
                      and not fp8_attention),
            fp8_attention=fp8_attention,
        )
        return StreamingEngine(models, options, self.device, self.dtype)

    def plan_tiles(self, geometry: Geometry, variant: VariantSettings,
                   layout: TileLayout | None = None) -> tuple[TilingSettings, VariantSettings]:
        """The tiling of a run at ``geometry``: ``layout``'s when given (one chosen for this output size), else
        the settings' own, or with ``tiling.auto`` the layout of :func:`~upscaler.tile_plan.choose_layout` for
        this process's usable GPU memory (untiled off CUDA); a layout runs with the decoder frames per pass
        and the blend group it was planned with."""
        tiling = self.settings.tiling
        if layout is None:
            if not tiling.auto:
                return tiling, variant
            usable = vram.usable_bytes(self.device)
            if usable is None:
                return replace(tiling, tile_size=0, tile_height=0), variant
            if self._memory_model is None:
                self._memory_model = MemoryModel.load(self.settings.throughput)
            layout = choose_layout(
                geometry.out_width, geometry.out_height, usable_bytes=usable, model=self._memory_model,
                variant=variant, kv_cache=self.settings.kv_cache_dtype, overlap=tiling.tile_overlap, multiple=self.settings.spatial_multiple,
                blend_frames=tiling.blend_frames, kv_ratio=self.settings.sparsity.kv_ratio,
            )
            if layout.fits:
                log.info("tile layout out=%dx%d usable_gib=%.1f %s", geometry.out_width, geometry.out_height,
                         usable / 2**30, layout.describe())
            else:
                log.warning("no tile layout fits out=%dx%d usable_gib=%.1f: using the smallest, %s",
                            geometry.out_width, geometry.out_height, usable / 2**30, layout.describe())
        variant = replace(variant, decoder_frames_per_pass=layout.decoder_frames)
        if not layout.tiled:
            return replace(tiling, tile_size=0, tile_height=0), variant
        multiple = self.settings.spatial_multiple
        return replace(tiling, tile_size=round_up(layout.tile_width, multiple),
                       tile_height=round_up(layout.tile_height, multiple), tile_overlap=layout.overlap,
                       blend_frames=layout.blend_frames), variant

    def upscale_frames(
        self,
        path: str | Path,
        geometry: Geometry,
        variant: VariantSettings,
        *,
        timer: StageTimer,
        should_cancel: CancelFn | None = None,
        tiling: TilingSettings | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the upscaled frames of the video at ``path`` as uint8 ``(t, H, W, 3)`` CPU tensors
        (tiled as ``tiling``, default the settings' own)."""
        tiling = self.settings.tiling if tiling is None else tiling
        if tiling.enabled:
            engine = self.engine(variant, tiling.tile_size * tiling.height)
            tiled = TiledRun(engine, replace(self.settings, tiling=tiling), geometry, variant, self.device, self.dtype)
            yield from tiled.frames(path, timer=timer, should_cancel=should_cancel)
            return
        engine = self.engine(variant, geometry.model_width * geometry.model_height)
        reader = FrameReader(path, prefetch=variant.input_prefetch)
        batches = lq_batches(
            reader, geometry, device=self.device, dtype=self.dtype,
            pad_mode=self.settings.pad_mode, multiple=self.settings.spatial_multiple,
        )
        chunks = engine.run(LQFrames(batches), geometry.out_size, geometry.model_size, timer=timer,
                            should_cancel=should_cancel)
        try:
            yield from frames_to_host(chunks, timer)
        finally:
            timer.add_wall("decode_wait", reader.wait_s)

    def upscale_file(
        self,
        src: str | Path,
        dst: str | Path,
        *,
        width: int | None = None,
        height: int | None = None,
        scale: int | None = None,
        variant: str = "tiny",
        codec: str | None = None,
        crf: int | None = None,
        preset: str | None = None,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        layout: TileLayout | None = None,
    ) -> UpscaleReport:
        """Upscale ``src`` into the MP4 ``dst``: exact target size, one output frame per input frame; in
        ``layout``'s tiles when given (chosen for that size), else as the settings tile (:meth:`plan_tiles`)."""
        began = time.perf_counter()
        info = probe(src)
        in_size = (info.width, info.height)
        multiple = self.settings.spatial_multiple
        if scale is not None:
            geometry = Geometry.for_scale(in_size, scale, multiple)
        elif width is not None and height is not None:
            geometry = Geometry.for_target(in_size, (width, height), multiple)
        else:
            raise ValueError("give either scale or both width and height")
        chosen = self.settings.variant(variant)
        tiling, chosen = self.plan_tiles(geometry, chosen, layout)
        timer = StageTimer(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        log.info(
            "upscale start src=%s frames~%d %dx%d->%dx%d model=%dx%d variant=%s tile=%dx%d",
            Path(src).name, info.frames, *in_size, *geometry.out_size, *geometry.model_size, chosen.name,
            tiling.tile_size, tiling.height if tiling.enabled else 0,
        )
        frames_done = 0
        writer_opts = {k: v for k, v in {"codec": codec, "crf": crf, "preset": preset}.items() if v is not None}
        with FrameWriter(
            dst, geometry.out_width, geometry.out_height, info.fps,
            audio_from=src if info.has_audio else None, **writer_opts,
        ) as writer:
            for frames in self.upscale_frames(src, geometry, chosen, timer=timer, should_cancel=should_cancel,
                                              tiling=tiling):
                write_began = time.perf_counter()
                writer.write(frames)
                timer.add_wall("encode_wait", time.perf_counter() - write_began)
                frames_done += frames.shape[0]
                if progress is not None:
                    progress(Progress(frames_done, max(info.frames, frames_done), time.perf_counter() - began))
            tail_began = time.perf_counter()
            writer.close()
            timer.add_wall("encode_tail", time.perf_counter() - tail_began)
        timer.add_wall("encode", writer.encode_seconds)
        seconds = timer.seconds()
        seconds["total"] = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
        tiles = run_tiles(geometry, tiling)
        report = UpscaleReport(
            frames=frames_done, fps=info.fps, in_size=in_size, out_size=geometry.out_size,
            variant=chosen.name, tiled=tiling.enabled, weights_label=self.weights_label,
            seconds=seconds, peak_vram_bytes=peak, tiles=len(tiles),
            tile_width=max(t.width for t in tiles) if tiling.enabled else 0,
            tile_height=max(t.height for t in tiles) if tiling.enabled else 0,
        )
        log.info("upscale done %s", report.summary())
        return report
