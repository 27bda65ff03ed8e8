"""GPU memory a tiled run's blend holds beside the last tile (torch-free: the planner prices layouts with it).

From the last tile on, each group of ``frames`` output frames is blended on the GPU while that tile
runs (:mod:`upscaler.tiled`, :class:`upscaler.tiling.FeatherBlender`). One group holds:

- the accumulators, :data:`ACCUMULATOR` values: the weighted sums ``(frames, 3, H, W)`` and the weights
  ``(H, W)`` (normalised in place);
- every tile's blend weights (one :data:`ACCUMULATOR` value per tile pixel), uploaded once per run;
- then the larger of: while a tile is added, its uint8 frames uploaded, their :data:`ACCUMULATOR` copy
  and the weighted product; once normalised, the uint8 frames and their channels-last copy for the host.
"""

from __future__ import annotations

import numpy as np

ACCUMULATOR = "float32"
"""The blend's accumulator dtype (its name in torch and numpy)."""
CHANNELS = 3
ACCUMULATOR_BYTES = np.dtype(ACCUMULATOR).itemsize
FRAME_BYTES = np.dtype(np.uint8).itemsize  # tile and output frames are uint8 RGB


def blend_bytes(height: int, width: int, tiles: int, tile_height: int, tile_width: int, frames: int) -> int:
    """Peak GPU bytes of blending a group of ``frames`` output frames of ``height x width`` from ``tiles``
    tiles of at most ``tile_height x tile_width`` pixels."""
    plane = height * width
    tile = tile_height * tile_width
    accumulators = (frames * CHANNELS + 1) * plane * ACCUMULATOR_BYTES
    weights = tiles * tile * ACCUMULATOR_BYTES
    adding = frames * CHANNELS * tile * (FRAME_BYTES + 2 * ACCUMULATOR_BYTES)
    output = 2 * frames * CHANNELS * plane * FRAME_BYTES
    return accumulators + weights + max(adding, output)
