"""Spatial tile layouts chosen from free GPU memory, by a memory model fitted to measured peaks.

Peak GPU memory of a run at a model frame of ``P`` pixels whose decoder takes ``F`` frames per pass, with
its streaming K/V cache stored as ``C``, is modelled as ``base + (dit + kv[C]) * P + decoder[kind] * F * P``
(GiB, pixels in millions): ``base`` the weights and fixed buffers, ``dit`` the DiT's activations per pixel
(one engine for every variant), ``kv[C]`` the K/V cache per pixel, computed from the model's shapes
(:mod:`upscaler.kv_cache_memory`: 5.4 GiB per megapixel in bf16, half that in FP8, at the default
``kv_ratio``; in proportion to the ring's slices at another), ``decoder[kind]`` the
decoder's activations per pixel of one pass. The other coefficients are a least-squares fit to the
measured peaks of the throughput table (``[[peak]]`` rows), each less its own K/V cache (the rows record
the ``kv_cache`` they were measured with), so a new measured row refines them without code changes and
rows of either cache dtype price runs of both. (The cache alone differs between the dtypes: the bf16 and
FP8 peaks measured in the same call differ by the computed cache within 0.05 GiB at 4K and 1080p.) A tiled run also blends a group of output frames on
the GPU while its last tile runs: that group's buffers (:func:`upscaler.blend_memory.blend_bytes`, at
the full output size) add to the tile's peak. A tiled ``[[peak]]`` row measured with that blend records it
(``blend_gib``), and the fit takes it off; rows without it (measured before the blend overlapped the last
tile) hold the tile's peak alone.

:func:`choose_layout` picks the fewest, then smallest, tiles (rows x columns of equal rectangles,
sides multiples of the model's 128 px window, bands where they need fewer tiles than squares), the
most decoder frames per pass and the largest blend group whose predicted peak fits the usable memory
minus a margin; :func:`plan_layout` does so with the settings a run uses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from upscaler.blend_memory import blend_bytes
from upscaler.configfiles import load_config
from upscaler.geometry import round_up
from upscaler.kv_cache_memory import ELEMENT_BYTES, kv_cache_gib_per_mpx, ring_slots
from upscaler.models.config import load_preset
from upscaler.settings import SparsitySettings, TilingSettings, UpscalerSettings, VariantSettings

log = logging.getLogger(__name__)

GIB = 1024**3
MPX = 1e6
MAX_SPLITS = 8  # rows and columns considered per axis
MEASURED_PRESET = "wan2.1-1.3b"  # the model whose peaks the [[peak]] rows hold...
MEASURED_KV_RATIO = SparsitySettings.kv_ratio  # ...at the default cache length


@dataclass(frozen=True)
class PeakRow:
    """One measured peak: the model frame size, decoder and its frames per pass, and the K/V cache dtype
    (``kv_cache_dtype``: "model" or "fp8") it was measured with."""

    decoder: str
    model_width: int
    model_height: int
    decoder_frames: int
    peak_gib: float
    kv_cache: str
    blend_gib: float = 0.0
    """The blend group's share of ``peak_gib`` (:func:`~upscaler.blend_memory.blend_bytes`; 0 untiled)."""

    @property
    def mpx(self) -> float:
        return self.model_width * self.model_height / MPX


@dataclass(frozen=True)
class MemoryModel:
    """``peak_gib = base + (dit + kv[C]) * P + decoder[kind] * F * P`` (P in megapixels, C the K/V cache
    dtype), plus the planning margin."""

    base_gib: float
    dit_gib_per_mpx: float
    """The DiT's activations, the K/V cache left out."""
    decoder_gib_per_mpx: dict[str, float]
    kv_cache_gib_per_mpx: dict[str, float]
    """The K/V cache per ``kv_cache_dtype`` (:func:`upscaler.kv_cache_memory.kv_cache_gib_per_mpx`)."""
    adjustable_decoders: frozenset[str] = frozenset()
    """Decoders measured at more than one frames-per-pass value: only these are planned with fewer
    frames per pass than their variant's (the others' split between per-pass and fixed memory is unknown)."""
    margin_gib: float = 1.0
    margin_fraction: float = 0.08

    @classmethod
    def fit(cls, rows: Sequence[PeakRow], kv_cache_gib_per_mpx: dict[str, float], margin_gib: float = 1.0,
            margin_fraction: float = 0.08) -> "MemoryModel":
        """Least-squares coefficients from measured rows, each less its K/V cache and its blend (at least one
        row per decoder, three sizes in all)."""
        decoders = sorted({r.decoder for r in rows})
        if len(rows) < 2 + len(decoders):
            raise ValueError(f"{len(rows)} peak rows cannot fit {2 + len(decoders)} coefficients")
        unknown = sorted({r.kv_cache for r in rows} - set(kv_cache_gib_per_mpx))
        if unknown:
            raise ValueError(f"peak rows with unknown kv_cache {unknown}; choose from {', '.join(kv_cache_gib_per_mpx)}")
        design = np.array([[1.0, r.mpx] + [r.mpx * r.decoder_frames * (r.decoder == d) for d in decoders] for r in rows])
        model_only = np.array([r.peak_gib - r.blend_gib - kv_cache_gib_per_mpx[r.kv_cache] * r.mpx for r in rows])
        coef, *_ = np.linalg.lstsq(design, model_only, rcond=None)
        adjustable = frozenset(d for d in decoders if len({r.decoder_frames for r in rows if r.decoder == d}) > 1)
        return cls(float(coef[0]), float(coef[1]), {d: float(c) for d, c in zip(decoders, coef[2:])},
                   dict(kv_cache_gib_per_mpx), adjustable, margin_gib, margin_fraction)

    @classmethod
    def load(cls, path: str = "throughput") -> "MemoryModel":
        """Fit the ``[[peak]]`` rows of a throughput table (``configs/throughput.toml`` or another), with the
        K/V cache of the model they were measured on; margins from its ``[tile_plan]``."""
        raw = load_config(path)
        rows = []
        for number, row in enumerate(raw["peak"], 1):
            if "kv_cache" not in row:
                raise ValueError(f"{path}: [[peak]] row {number} lacks kv_cache, the K/V cache dtype it was measured "
                                 f"with (flashvsr-bench --kv-cache: {', '.join(ELEMENT_BYTES)})")
            rows.append(PeakRow(**{k: v for k, v in row.items() if k in PeakRow.__dataclass_fields__}))
        dit = load_preset(MEASURED_PRESET).dit
        cache = {dtype: kv_cache_gib_per_mpx(dit, MEASURED_KV_RATIO, dtype) for dtype in ELEMENT_BYTES}
        margins = raw.get("tile_plan", {})
        return cls.fit(rows, cache, float(margins.get("margin_gib", 1.0)), float(margins.get("margin_fraction", 0.08)))

    def peak_gib(self, decoder: str, model_pixels: int, decoder_frames: int, kv_cache: str,
                 kv_ratio: float = MEASURED_KV_RATIO) -> float:
        """Predicted peak GiB of a run at ``model_pixels`` with ``decoder_frames`` per decoder pass and its
        K/V cache stored as ``kv_cache`` (a ``kv_cache_dtype``), ``kv_ratio`` slices long (the cache's ring
        grows with it)."""
        if decoder not in self.decoder_gib_per_mpx:
            raise LookupError(f"no measured peak for decoder {decoder!r}: add a [[peak]] row to the throughput table")
        mpx = model_pixels / MPX
        cache = self.kv_cache_gib_per_mpx[kv_cache] * ring_slots(kv_ratio) / ring_slots(MEASURED_KV_RATIO)
        return (self.base_gib + (self.dit_gib_per_mpx + cache) * mpx
                + self.decoder_gib_per_mpx[decoder] * decoder_frames * mpx)

    def budget_gib(self, usable_bytes: int) -> float:
        """What a run may peak at in ``usable_bytes``: less the fixed and proportional margins."""
        usable = usable_bytes / GIB
        return usable * (1.0 - self.margin_fraction) - self.margin_gib


@dataclass(frozen=True)
class TileLayout:
    """``rows`` x ``columns`` tiles of ``tile_width`` x ``tile_height`` output pixels (one tile: untiled),
    blended ``blend_frames`` output frames at a time (0 untiled); ``peak_gib`` includes the blend's ``blend_gib``;
    ``budget_gib`` is what the memory it was chosen for allows (:meth:`MemoryModel.budget_gib`)."""

    rows: int
    columns: int
    tile_width: int
    tile_height: int
    overlap: int
    decoder_frames: int
    peak_gib: float
    blend_frames: int
    blend_gib: float
    budget_gib: float

    @property
    def tiles(self) -> int:
        return self.rows * self.columns

    @property
    def fits(self) -> bool:
        """Whether the predicted peak fits the budget (the chooser returns the smallest layout when none does)."""
        return self.peak_gib <= self.budget_gib

    @property
    def tiled(self) -> bool:
        return self.tiles > 1

    def describe(self) -> str:
        blend = f", blend {self.blend_frames} frames/group ({self.blend_gib:.1f} GiB)" if self.tiled else ""
        return (f"{self.rows}x{self.columns} tiles of {self.tile_width}x{self.tile_height} overlap {self.overlap}, "
                f"decoder {self.decoder_frames} frames/pass{blend}, predicted peak {self.peak_gib:.1f} GiB "
                f"(budget {self.budget_gib:.1f} GiB)")


def axis_tile(length: int, splits: int, overlap: int, multiple: int) -> int:
    """The side of ``splits`` equal tiles covering ``length`` with at least ``overlap`` between neighbours,
    rounded up to ``multiple`` (the model pads to it anyway); ``length`` itself for one split."""
    if splits == 1:
        return length
    return round_up(math.ceil((length + (splits - 1) * overlap) / splits), multiple)


def candidate_layouts(width: int, height: int, overlap: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """``(rows, columns, tile_width, tile_height)`` of every grid up to :data:`MAX_SPLITS` per axis whose
    tiles still overlap by ``overlap`` and are no larger than the frame (the untiled run first)."""
    out = []
    for rows in range(1, MAX_SPLITS + 1):
        for columns in range(1, MAX_SPLITS + 1):
            tile_w, tile_h = axis_tile(width, columns, overlap, multiple), axis_tile(height, rows, overlap, multiple)
            if (columns > 1 and tile_w >= width) or (rows > 1 and tile_h >= height):
                continue  # rounding made one tile cover the axis: not a split
            out.append((rows, columns, tile_w, tile_h))
    return out


def blend_groups(most: int) -> list[int]:
    """The blend group sizes a tiled layout may use, largest first: ``most`` frames, halved down to 1."""
    groups = [most]
    while groups[-1] > 1:
        groups.append(groups[-1] // 2)
    return groups


def choose_layout(
    width: int,
    height: int,
    *,
    usable_bytes: int,
    model: MemoryModel,
    variant: VariantSettings,
    kv_cache: str,
    overlap: int,
    multiple: int = 128,
    blend_frames: int = TilingSettings.blend_frames,
    min_tiles: int = 1,
    kv_ratio: float = MEASURED_KV_RATIO,
) -> TileLayout:
    """The fewest tiles (at least ``min_tiles`` where the frame can be cut into that many), then the fewest
    model pixels, then the most decoder frames per pass (at most ``variant``'s), then the largest blend group
    (at most ``blend_frames``), whose predicted peak (the tile's with its K/V cache stored as ``kv_cache``,
    ``kv_ratio`` slices long,
    plus the blend's when tiled) fits
    ``usable_bytes`` less the margin; the smallest-peak layout when none fits (``fits`` false: the caller
    decides whether to run it)."""
    budget = model.budget_gib(usable_bytes)
    grids = candidate_layouts(width, height, overlap, multiple)
    grids = [g for g in grids if g[0] * g[1] >= min_tiles] or grids
    options: list[tuple[tuple[int, int, int, int], TileLayout]] = []
    for rows, columns, tile_w, tile_h in grids:
        tiles = rows * columns
        model_pixels = round_up(tile_w, multiple) * round_up(tile_h, multiple)
        most = variant.frames_per_pass(model_pixels)
        fewest = 1 if variant.decoder in model.adjustable_decoders else most
        blends = [(g, blend_bytes(height, width, tiles, tile_h, tile_w, g) / GIB) for g in blend_groups(blend_frames)]
        for frames in range(most, fewest - 1, -1):
            peak = model.peak_gib(variant.decoder, model_pixels, frames, kv_cache, kv_ratio)
            for group, blend in blends if tiles > 1 else [(0, 0.0)]:
                layout = TileLayout(rows, columns, tile_w, tile_h, overlap if tiles > 1 else 0, frames, peak + blend,
                                    group, blend, budget)
                options.append(((tiles, tiles * model_pixels, -frames, -group), layout))
    fitting = [o for o in options if o[1].fits]
    chosen = min(fitting, key=lambda o: o[0])[1] if fitting else min(options, key=lambda o: o[1].peak_gib)[1]
    log.debug("tile layout out=%dx%d usable_gib=%.1f %s", width, height, usable_bytes / GIB, chosen.describe())
    return chosen


@dataclass(frozen=True)
class TiledRow:
    """A measured tiled run: output size, tile size, tile count and end-to-end frames/s."""

    device: str
    variant: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    tiles: int
    fps: float


def load_tiled_rows(path: str = "throughput") -> list[TiledRow]:
    """The ``[[tiled]]`` rows of ``configs/throughput.toml``."""
    return [TiledRow(**{k: v for k, v in row.items() if k in TiledRow.__dataclass_fields__})
            for row in load_config(path).get("tiled", [])]


def layout_slowdown(tiles: int, tile_width: int, tile_height: int, width: int, height: int,
                    seconds_per_frame: Callable[[str, int], float], rows: Sequence[TiledRow], device: str, variant: str,
                    default: float) -> float:
    """Seconds per frame of ``tiles`` tiles of ``tile_width x tile_height`` over the untiled run's at
    ``width x height`` on ``device``: the tiles at the untiled speed of their size
    (``seconds_per_frame(device, pixels)``) times the mean overhead of the measured tiled rows of this
    variant on this device, else on any device (the overhead, per-tile start, store and blend against that
    device's own untiled speed, is a ratio); ``default`` (the table's ``tiled_slowdown``) without rows."""
    measured = ([r for r in rows if r.device == device and r.variant == variant]
                or [r for r in rows if r.variant == variant])
    if not measured:
        return default
    overhead = sum((1.0 / r.fps) / (r.tiles * seconds_per_frame(r.device, r.tile_width * r.tile_height))
                   for r in measured) / len(measured)
    return (overhead * tiles * seconds_per_frame(device, tile_width * tile_height)
            / seconds_per_frame(device, width * height))


def plan_layout(width: int, height: int, usable_bytes: int, variant: str, settings: UpscalerSettings, *,
                min_tiles: int = 1) -> TileLayout:
    """:func:`choose_layout` for ``variant`` of ``settings`` (those the run uses: its tiling, variants, K/V
    cache dtype and length, and spatial multiple), with the memory model of their throughput table (``settings.throughput``)."""
    return choose_layout(
        width, height, usable_bytes=usable_bytes, model=MemoryModel.load(settings.throughput),
        variant=settings.variant(variant), kv_cache=settings.kv_cache_dtype, overlap=settings.tiling.tile_overlap, multiple=settings.spatial_multiple,
        blend_frames=settings.tiling.blend_frames, min_tiles=min_tiles, kv_ratio=settings.sparsity.kv_ratio,
    )
