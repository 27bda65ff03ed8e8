"""Turning decoded input frames into model-input batches for the engine."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import numpy as np
import torch

from upscaler.geometry import Geometry, round_up
from upscaler.resize import pad_to_size, to_model_input
from upscaler.tiling import Tile


def lq_batches(
    frames: Iterable[np.ndarray | torch.Tensor],
    geometry: Geometry,
    *,
    device: torch.device,
    dtype: torch.dtype,
    pad_mode: str,
    multiple: int,
    tile: Tile | None = None,
    batch_size: int = 8,
) -> Iterator[torch.Tensor]:
    """Yield ``(1, 3, t, H, W)`` LQ batches: bicubic to the output size, cropped to ``tile``, padded.

    Without a tile the padded size is the geometry's model size; with one it is the tile's size
    rounded up to the same multiple.
    """
    iterator = iter(frames)
    if tile is None:
        target_h, target_w = geometry.model_height, geometry.model_width
    else:
        target_h, target_w = round_up(tile.height, multiple), round_up(tile.width, multiple)
    while True:
        group = list(islice(iterator, batch_size))
        if not group:
            return
        stacked = torch.stack([torch.as_tensor(f) for f in group])
        x = to_model_input(stacked, size=geometry.out_size, device=device, dtype=dtype)
        if tile is not None:
            x = x[:, :, :, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
        yield pad_to_size(x, target_h, target_w, pad_mode)
