"""Spatially tiled runs of the whole model, for GPUs with too little memory for the full frame.

The streaming K/V cache grows with the frame area, so tiles are processed one after another
(tile-major): each tile streams the whole clip through the engine at tile size and its output frames
go to a raw uint8 file on disk. Then the tiles are blended frame by frame with feathered weights
(:class:`~upscaler.tiling.FeatherBlender`) and yielded in order. GPU memory is bounded by one tile;
disk holds about one uncompressed copy of the output (plus the overlaps) until the run ends.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from upscaler.engine import StreamingEngine
from upscaler.frame_source import lq_batches
from upscaler.geometry import Geometry, round_up
from upscaler.lq_frames import LQFrames
from upscaler.resize import frames_to_host
from upscaler.settings import UpscalerSettings, VariantSettings
from upscaler.tiling import FeatherBlender, Tile, tile_grid
from upscaler.timing import StageTimer
from upscaler.video import FrameReader

log = logging.getLogger(__name__)

TILE_OFFSET_MULTIPLE = 16
BLEND_FRAMES = 8


class _TileFile:
    """Append-only raw ``uint8 (t, h, w, 3)`` frames of one tile, read back by frame range."""

    def __init__(self, path: Path, tile: Tile) -> None:
        self.path = path
        self.tile = tile
        self.frames = 0
        self._frame_bytes = tile.height * tile.width * 3

    def append(self, frames: torch.Tensor) -> None:
        with self.path.open("ab") as handle:
            handle.write(frames[:, : self.tile.height, : self.tile.width].contiguous().numpy().tobytes())
        self.frames += frames.shape[0]

    def read(self, start: int, end: int) -> torch.Tensor:
        data = np.fromfile(self.path, dtype=np.uint8, count=(end - start) * self._frame_bytes,
                           offset=start * self._frame_bytes)
        return torch.from_numpy(data.reshape(end - start, self.tile.height, self.tile.width, 3))


class TiledRun:
    """Runs ``engine`` tile by tile over a clip and yields blended uint8 frames ``(t, H, W, 3)``."""

    def __init__(
        self,
        engine: StreamingEngine,
        settings: UpscalerSettings,
        geometry: Geometry,
        variant: VariantSettings,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.geometry = geometry
        self.variant = variant
        self.device = device
        self.dtype = dtype
        tiling = settings.tiling
        self.tiles = tile_grid(geometry.out_height, geometry.out_width, tiling.tile_size, tiling.tile_overlap,
                               TILE_OFFSET_MULTIPLE)
        self.ramp = max(1, min(tiling.tile_overlap, tiling.tile_size // 2))

    def frames(
        self, path: str | Path, *, timer: StageTimer, should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Upscale ``path`` tile by tile, then yield the blended frames in order."""
        log.info("tiled run tiles=%d tile=%d overlap=%d out=%dx%d", len(self.tiles), self.settings.tiling.tile_size,
                 self.settings.tiling.tile_overlap, *self.geometry.out_size)
        with tempfile.TemporaryDirectory(prefix="flashvsr-tiles-") as scratch:
            files = [self._run_tile(path, tile, Path(scratch) / f"tile{i}.u8", timer, should_cancel)
                     for i, tile in enumerate(self.tiles)]
            counts = {f.frames for f in files}
            if len(counts) != 1:
                raise RuntimeError(f"tiles produced different frame counts: {sorted(counts)}")
            total = counts.pop()
            for start in range(0, total, BLEND_FRAMES):
                end = min(total, start + BLEND_FRAMES)
                with timer.stage("tile_blend"):
                    yield self._blend(files, start, end)

    def _run_tile(self, path: str | Path, tile: Tile, target: Path, timer: StageTimer,
                  should_cancel: Callable[[], bool] | None) -> _TileFile:
        multiple = self.settings.spatial_multiple
        model_size = (round_up(tile.width, multiple), round_up(tile.height, multiple))
        reader = FrameReader(path, prefetch=self.variant.input_prefetch)
        batches = lq_batches(reader, self.geometry, device=self.device, dtype=self.dtype,
                             pad_mode=self.settings.pad_mode, multiple=multiple, tile=tile)
        out = _TileFile(target, tile)
        chunks = self.engine.run(LQFrames(batches), (tile.width, tile.height), model_size,
                                 timer=timer, should_cancel=should_cancel)
        for frames in frames_to_host(chunks, timer):
            with timer.stage("tile_store"):
                out.append(frames)
        log.info("tile done y=%d x=%d size=%dx%d frames=%d", tile.y, tile.x, tile.width, tile.height, out.frames)
        return out

    def _blend(self, files: list[_TileFile], start: int, end: int) -> torch.Tensor:
        shape = (end - start, 3, self.geometry.out_height, self.geometry.out_width)
        blender = FeatherBlender(shape, self.ramp, device=self.device)
        for tile_file in files:
            values = tile_file.read(start, end).to(self.device).permute(0, 3, 1, 2)
            blender.add(tile_file.tile, values)
        blended = blender.result().round_().clamp_(0, 255).to(torch.uint8)
        return blended.permute(0, 2, 3, 1).contiguous().cpu()
