"""Turning decoded input frames into model-input batches for the engine."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import numpy as np
import torch

from upscaler.geometry import Geometry, round_up
from upscaler.resize import pad_to_size, to_model_input
from upscaler.tiling import Tile


# Input pixels kept around a tile's source region: bicubic reads 2 input pixels either side.
BICUBIC_MARGIN = 2


def tile_source_crop(geometry: Geometry, tile: Tile) -> tuple[slice, slice, int] | None:
    """Input rows and columns whose bicubic upscaling contains ``tile``, and the scale, when the output
    is the input times a power of two (the same on both axes, as Vidaio's 2x and 4x tasks); else None.

    With such a scale ``s`` an output pixel's source coordinate, ``(x + 0.5) / s - 0.5``, is exact in
    floating point, so upscaling the crop and cutting the tile out of it gives the same values as cutting
    it out of the whole upscaled frame: the margin keeps every tap of the tile's pixels inside the crop,
    and where the crop meets the frame border the clamping is the same. (At 3x, 1/3 rounds: the values
    would differ in the last bits, so other scales upscale the whole frame.)
    """
    scale, rest_w = divmod(geometry.out_width, geometry.in_width)
    scale_h, rest_h = divmod(geometry.out_height, geometry.in_height)
    if rest_w or rest_h or scale != scale_h or scale < 1 or scale & (scale - 1):
        return None

    def span(start: int, size: int, limit: int) -> slice:
        first = max(0, start // scale - BICUBIC_MARGIN)
        return slice(first, min(limit, -(-(start + size) // scale) + BICUBIC_MARGIN))

    return span(tile.y, tile.height, geometry.in_height), span(tile.x, tile.width, geometry.in_width), scale


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
    rounded up to the same multiple, and only the input region the tile needs is upscaled where the
    scale is a power of two (:func:`tile_source_crop`; the whole frame otherwise).
    """
    iterator = iter(frames)
    crop = tile_source_crop(geometry, tile) if tile is not None else None
    if tile is None:
        target_h, target_w = geometry.model_height, geometry.model_width
    else:
        target_h, target_w = round_up(tile.height, multiple), round_up(tile.width, multiple)
    while True:
        group = list(islice(iterator, batch_size))
        if not group:
            return
        if crop is not None:
            rows, cols, scale = crop
            source = torch.stack([torch.as_tensor(f)[rows, cols] for f in group])  # copies the crop only
            size = (source.shape[2] * scale, source.shape[1] * scale)
            x = to_model_input(source, size=size, device=device, dtype=dtype)
            top, left = tile.y - rows.start * scale, tile.x - cols.start * scale
            x = x[:, :, :, top : top + tile.height, left : left + tile.width]
        else:
            stacked = torch.stack([torch.as_tensor(f) for f in group])
            x = to_model_input(stacked, size=geometry.out_size, device=device, dtype=dtype)
            if tile is not None:
                x = x[:, :, :, tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
        yield pad_to_size(x, target_h, target_w, pad_mode)
