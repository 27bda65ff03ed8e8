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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import torch

from upscaler.engine import StreamingEngine
from upscaler.frame_source import lq_batches
from upscaler.geometry import Geometry, round_up
from upscaler.lq_frames import LQFrames
from upscaler.resize import HostFrames, frames_to_host, one_behind, start_host_copy
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

    def read(self, start: int, end: int, pin: bool = False) -> torch.Tensor:
        """Frames ``[start, end)``; in pinned memory when ``pin`` (for an asynchronous upload)."""
        out = torch.empty((end - start, self.tile.height, self.tile.width, 3), dtype=torch.uint8, pin_memory=pin)
        with self.path.open("rb") as handle:
            handle.seek(start * self._frame_bytes)
            if handle.readinto(out.numpy()) != out.numel():
                raise RuntimeError(f"tile file {self.path.name} ends before frame {end}")
        return out


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
            files = self._run_tiles(path, Path(scratch), timer, should_cancel)
            counts = {f.frames for f in files}
            if len(counts) != 1:
                raise RuntimeError(f"tiles produced different frame counts: {sorted(counts)}")
            yield from self._blended(files, counts.pop(), timer)

    def _run_tiles(self, path: str | Path, scratch: Path, timer: StageTimer,
                   should_cancel: Callable[[], bool] | None) -> list[_TileFile]:
        """Every tile's output file; the next tile's input decodes ahead while a tile runs (its first
        frames are ready when it starts instead of the GPU waiting for them)."""
        files: list[_TileFile] = []
        reader = FrameReader(path, prefetch=self.variant.input_prefetch).start()
        try:
            for index, tile in enumerate(self.tiles):
                current = reader
                if index + 1 < len(self.tiles):
                    reader = FrameReader(path, prefetch=self.variant.input_prefetch).start()
                try:
                    files.append(self._run_tile(current, tile, scratch / f"tile{index}.u8", timer, should_cancel))
                finally:
                    current.close()
        finally:
            reader.close()
        return files

    def _run_tile(self, reader: FrameReader, tile: Tile, target: Path, timer: StageTimer,
                  should_cancel: Callable[[], bool] | None) -> _TileFile:
        multiple = self.settings.spatial_multiple
        model_size = (round_up(tile.width, multiple), round_up(tile.height, multiple))
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

    def _blended(self, files: list[_TileFile], total: int, timer: StageTimer) -> Iterator[torch.Tensor]:
        """The blended frames in groups of :data:`BLEND_FRAMES`: a thread reads the next group's tiles
        from disk into pinned memory while the GPU blends this one, and each group is handed over once
        the next one is queued (its copy to the host overlaps that work)."""
        groups = [(start, min(total, start + BLEND_FRAMES)) for start in range(0, total, BLEND_FRAMES)]
        pin = self.device.type == "cuda"
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-read") as pool:
            def read(group: tuple[int, int]) -> Future[list[torch.Tensor]]:
                return pool.submit(lambda: [f.read(*group, pin=pin) for f in files])

            def started() -> Iterator[HostFrames]:
                upcoming = read(groups[0])
                for index, group in enumerate(groups):
                    with timer.stage("tile_read_wait"):
                        tiles = upcoming.result()
                    if index + 1 < len(groups):
                        upcoming = read(groups[index + 1])
                    with timer.stage("tile_blend"):
                        yield self._blend(files, tiles, group[1] - group[0])

            if groups:
                yield from one_behind(started())

    def _blend(self, files: list[_TileFile], tiles: list[torch.Tensor], count: int) -> HostFrames:
        shape = (count, 3, self.geometry.out_height, self.geometry.out_width)
        blender = FeatherBlender(shape, self.ramp, device=self.device)
        for tile_file, values in zip(files, tiles):
            blender.add(tile_file.tile, values.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
        blended = blender.result().round_().clamp_(0, 255).to(torch.uint8)
        return start_host_copy(blended.permute(0, 2, 3, 1).contiguous())
