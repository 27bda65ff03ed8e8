"""Turning decoded input frames into model-input batches for the engine."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from upscaler.geometry import Geometry, round_up
from upscaler.resize import to_model_input
from upscaler.tiling import Tile


def pad_to_size(x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Pad ``(1, 3, t, h, w)`` at the bottom/right up to ``(height, width)``."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "reflect" and (pad_h >= x.shape[-2] or pad_w >= x.shape[-1]):
        mode = "replicate"  # reflection cannot pad past the frame's own size
    b, c, t, h, w = x.shape
    flat = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    flat = F.pad(flat, (0, pad_w, 0, pad_h), mode=mode)
    return flat.reshape(b, t, c, height, width).permute(0, 2, 1, 3, 4)


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
