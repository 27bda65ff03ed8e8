"""Spatially tiled runs of the whole model, for GPUs with too little memory for the full frame.

The streaming K/V cache grows with the frame area, so tiles are processed one after another
(tile-major): each tile streams the whole clip through the engine at tile size and its output frames
go to a raw uint8 file on disk. The input is decoded once, during the first tile, into a raw file
that the other tiles read their crops from (decoding holds the GIL: fifteen decodes of the clip for
fifteen tiles starved the thread that launches the GPU work). Tile frames are copied to pinned host
memory and written by a store thread (:class:`TileStore`), so the thread that launches the GPU work
does neither, and the next tile starts while the last stores of the previous one finish. The tiles
are blended on the GPU in groups of frames with feathered weights
(:class:`~upscaler.tiling.FeatherBlender`) and yielded in order; from the last tile on, each group as
soon as every tile has stored it, so the blend and the encoder run beside the last tile instead of
after it. GPU memory is bounded by one tile plus one group's blend during the last tile
(:func:`upscaler.blend_memory.blend_bytes`; ``tiling.blend_frames`` frames a group); disk holds
about one uncompressed copy of the output (plus the overlaps) and one of the input until the run ends.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from upscaler.engine import StreamingEngine
from upscaler.frame_source import lq_batches
from upscaler.geometry import Geometry, round_up
from upscaler.lq_frames import LQFrames
from upscaler.resize import HostFrames, start_host_copy, start_uint8_copy
from upscaler.settings import TilingSettings, UpscalerSettings, VariantSettings
from upscaler.tiling import FeatherBlender, Tile, feather_weights, tile_grid
from upscaler.timing import StageTimer
from upscaler.video import FrameReader

log = logging.getLogger(__name__)

TILE_OFFSET_MULTIPLE = 16
STORE_DEPTH = 4  # tile chunks waiting for the store thread before the GPU loop waits for it


def run_tiles(geometry: Geometry, tiling: TilingSettings) -> list[Tile]:
    """The tiles a tiled run of ``geometry`` cuts the output frame into (one tile when untiled)."""
    if not tiling.enabled:
        return [Tile(0, 0, geometry.out_height, geometry.out_width)]
    return tile_grid(geometry.out_height, geometry.out_width, tiling.tile_size, tiling.tile_overlap,
                     TILE_OFFSET_MULTIPLE, tiling.height)


class RawFrames:
    """Append-only raw ``uint8 (t, height, width, 3)`` frames in a file, read back by frame range."""

    def __init__(self, path: Path, height: int, width: int) -> None:
        self.path = path
        self.height = height
        self.width = width
        self.frames = 0
        self._frame_bytes = height * width * 3

    def append(self, frames: torch.Tensor | np.ndarray) -> None:
        """Append ``(t, >= height, >= width, 3)`` frames, cropped to the stored size."""
        crop = torch.as_tensor(frames)[:, : self.height, : self.width]
        if tuple(crop.shape[1:]) != (self.height, self.width, 3):
            raise ValueError(f"frames of {tuple(frames.shape[1:])} do not cover {self.height}x{self.width}x3")
        with self.path.open("ab") as handle:
            crop.contiguous().numpy().tofile(handle)  # no intermediate bytes copy (8 cropped 1024 px tiles: 16 -> 5 ms)
        self.frames += crop.shape[0]

    def read(self, start: int, end: int, pin: bool = False) -> torch.Tensor:
        """Frames ``[start, end)``; in pinned memory when ``pin`` (for an asynchronous upload)."""
        out = torch.empty((end - start, self.height, self.width, 3), dtype=torch.uint8, pin_memory=pin)
        with self.path.open("rb") as handle:
            handle.seek(start * self._frame_bytes)
            if handle.readinto(out.numpy()) != out.numel():
                raise RuntimeError(f"frame file {self.path.name} ends before frame {end}")
        return out

    def mapped(self) -> np.ndarray:
        """All frames as a copy-on-write memory map: a consumer that crops reads only the pages it touches."""
        return np.memmap(self.path, dtype=np.uint8, mode="c", shape=(self.frames, self.height, self.width, 3))


class TileStore:
    """Stores tile output frames from a background thread, so the thread that launches the GPU work
    neither waits for their device-to-host copies nor writes them: :meth:`put` returns at once unless
    more than ``depth`` stores are pending (then it waits for the oldest: ``tile_store_wait``; with 0
    every put waits for its own store)."""

    def __init__(self, depth: int | None = None) -> None:
        self.depth = STORE_DEPTH if depth is None else depth
        self.busy_s = 0.0
        self.wait_s = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-store")
        self._pending: deque[Future[None]] = deque()

    def put(self, out: RawFrames, frames: HostFrames) -> None:
        """Append ``frames`` to ``out`` once their copy has finished (in order with earlier puts)."""
        self._pending.append(self._pool.submit(self._store, out, frames))
        began = time.perf_counter()
        while len(self._pending) > self.depth:
            self._pending.popleft().result()
        self.wait_s += time.perf_counter() - began

    def _store(self, out: RawFrames, frames: HostFrames) -> None:
        host = frames.wait()
        began = time.perf_counter()
        out.append(host)
        self.busy_s += time.perf_counter() - began

    def drain(self) -> None:
        """Wait for every pending store (re-raising its error)."""
        began = time.perf_counter()
        while self._pending:
            self._pending.popleft().result()
        self.wait_s += time.perf_counter() - began

    def close(self) -> None:
        """Stop the thread (pending stores are finished first)."""
        self._pool.shutdown(wait=True)


def _recorded(frames: Iterable[np.ndarray], store: RawFrames) -> Iterator[np.ndarray]:
    """Pass ``frames`` through, appending each to ``store``."""
    for frame in frames:
        store.append(frame[None])
        yield frame


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
        self.tiles = run_tiles(geometry, tiling)
        self.ramp = max(1, min(tiling.tile_overlap, tiling.tile_size // 2, tiling.height // 2))
        self._weights: dict[Tile, torch.Tensor] = {}  # each tile's blend weights, uploaded once per run

    def frames(
        self, path: str | Path, *, timer: StageTimer, should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Upscale ``path`` tile by tile and yield the blended frames in order: from the last tile on,
        each group of frames as soon as every tile has stored it, so the blend and the encoder run
        beside the last tile instead of after it."""
        tiling = self.settings.tiling
        log.info("tiled run tiles=%d tile=%dx%d overlap=%d out=%dx%d", len(self.tiles), tiling.tile_size, tiling.height,
                 tiling.tile_overlap, *self.geometry.out_size)
        with tempfile.TemporaryDirectory(prefix="flashvsr-tiles-") as scratch, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-read") as reads:
            files = [(tile, RawFrames(Path(scratch) / f"tile{index}.u8", tile.height, tile.width))
                     for index, tile in enumerate(self.tiles)]
            blend = _GroupBlend(self, files, timer, reads)
            for tile in self.tiles:  # uploaded now, while the GPU has nothing queued, not during the last tile
                self._weights[tile] = feather_weights(tile, self.geometry.out_height, self.geometry.out_width,
                                                      self.ramp, self.device)
            for _ in self._run_tiles(path, Path(scratch), files, timer, should_cancel):
                yield from blend.ready(min(out.frames for _, out in files), final=False)
            counts = {out.frames for _, out in files}
            if len(counts) != 1:
                raise RuntimeError(f"tiles produced different frame counts: {sorted(counts)}")
            yield from blend.ready(counts.pop(), final=True)

    def _run_tiles(self, path: str | Path, scratch: Path, files: list[tuple[Tile, RawFrames]], timer: StageTimer,
                   should_cancel: Callable[[], bool] | None) -> Iterator[None]:
        """Run every tile into its file, yielding after each chunk of the last tile is queued for storing
        (the files are complete when this ends). The first tile decodes the input and records it; the
        others read their crops from that record instead of decoding again."""
        source = RawFrames(scratch / "input.u8", self.geometry.in_height, self.geometry.in_width)
        store = TileStore()
        try:
            with FrameReader(path, prefetch=self.variant.input_prefetch) as reader:
                frames: Iterable[np.ndarray] = _recorded(reader, source)
                for index, (tile, out) in enumerate(files):
                    if index > 0:
                        frames = source.mapped()
                    for _ in self._run_tile(frames, tile, out, timer, should_cancel, store):
                        if index == len(files) - 1:
                            yield
            store.drain()
        finally:
            store.close()
            timer.add_wall("tile_store", store.busy_s)
            timer.add_wall("tile_store_wait", store.wait_s)

    def _run_tile(self, frames: Iterable[np.ndarray], tile: Tile, out: RawFrames, timer: StageTimer,
                  should_cancel: Callable[[], bool] | None, store: TileStore | None = None) -> Iterator[None]:
        """Stream the clip through the engine at ``tile``'s size into ``out`` through ``store``'s thread,
        yielding after each chunk is queued (with no ``store``, a store of its own: then ``out`` is
        complete when this ends)."""
        multiple = self.settings.spatial_multiple
        model_size = (round_up(tile.width, multiple), round_up(tile.height, multiple))
        batches = lq_batches(frames, self.geometry, device=self.device, dtype=self.dtype,
                             pad_mode=self.settings.pad_mode, multiple=multiple, tile=tile)
        chunks = self.engine.run(LQFrames(batches), (tile.width, tile.height), model_size,
                                 timer=timer, should_cancel=should_cancel)
        own = store is None
        store = TileStore() if store is None else store
        try:
            for chunk in chunks:
                with timer.stage("to_uint8"):
                    copy = start_uint8_copy(chunk)
                store.put(out, copy)
                yield
            if own:
                store.drain()
        finally:
            if own:
                store.close()
        log.info("tile queued y=%d x=%d size=%dx%d", tile.y, tile.x, tile.width, tile.height)

    def _blend(self, files: list[tuple[Tile, RawFrames]], tiles: list[torch.Tensor], count: int) -> HostFrames:
        shape = (count, 3, self.geometry.out_height, self.geometry.out_width)
        blender = FeatherBlender(shape, self.ramp, device=self.device, weight_cache=self._weights)
        for (tile, _), values in zip(files, tiles):
            blender.add(tile, values.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
        blended = blender.result().round_().clamp_(0, 255).to(torch.uint8)
        return start_host_copy(blended.permute(0, 2, 3, 1).contiguous())


class _GroupBlend:
    """Blends the tiles' stored frames in groups of ``tiling.blend_frames`` as they become complete: a read
    thread loads a group's tiles into pinned memory while the GPU blends the one before, and each blended
    group is handed over once the next one is queued (its copy to the host overlaps that work)."""

    def __init__(self, run: TiledRun, files: list[tuple[Tile, RawFrames]], timer: StageTimer,
                 reads: ThreadPoolExecutor) -> None:
        self._run = run
        self._files = files
        self._timer = timer
        self._pool = reads
        self._pin = run.device.type == "cuda"
        self._group = run.settings.tiling.blend_frames
        self._queued = 0  # frames whose group has been queued for reading
        self._reads: deque[tuple[int, Future[list[torch.Tensor]]]] = deque()
        self._pending: HostFrames | None = None

    def ready(self, available: int, final: bool) -> Iterator[torch.Tensor]:
        """Yield the blended frames of the groups within the first ``available`` frames (every tile has
        stored them), keeping the newest group reading; with ``final`` (``available`` is then the clip's
        frame count) everything left, the last group possibly shorter."""
        while self._queued < available and (final or self._queued + self._group <= available):
            group = (self._queued, min(self._queued + self._group, available))
            self._reads.append((group[1] - group[0], self._pool.submit(self._read, group)))
            self._queued = group[1]
        while len(self._reads) > (0 if final else 1):
            count, future = self._reads.popleft()
            with self._timer.stage("tile_read_wait"):
                tiles = future.result()
            with self._timer.stage("tile_blend"):
                started = self._run._blend(self._files, tiles, count)
            if self._pending is not None:
                yield self._pending.wait()
            self._pending = started
        if final and self._pending is not None:
            yield self._pending.wait()
            self._pending = None

    def _read(self, group: tuple[int, int]) -> list[torch.Tensor]:
        return [out.read(*group, pin=self._pin) for _, out in self._files]
