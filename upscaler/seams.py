"""How far a tiled run's output is from the untiled run's, in the tile overlaps (seams) and away from them.

Both outputs come from the same weights and input, so the difference is what tiling costs: the model
sees less context at a tile's edges, and the feathered blend mixes two tiles' views in the overlaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from upscaler.tiling import Tile


def coverage(height: int, width: int, tiles: Sequence[Tile]) -> torch.Tensor:
    """``(height, width)`` int count of the tiles covering each pixel (>= 2: an overlap)."""
    count = torch.zeros(height, width, dtype=torch.int32)
    for tile in tiles:
        count[tile.rows, tile.cols] += 1
    return count


def seam_mask(height: int, width: int, tiles: Sequence[Tile], margin: int = 8) -> torch.Tensor:
    """``(height, width)`` bool: the overlaps, and ``margin`` px either side of every tile edge inside
    the frame (where tiles without overlap meet)."""
    mask = coverage(height, width, tiles) >= 2
    for tile in tiles:
        for edge in (tile.y, tile.y + tile.height):
            if 0 < edge < height:
                mask[max(0, edge - margin):edge + margin, tile.cols] = True
        for edge in (tile.x, tile.x + tile.width):
            if 0 < edge < width:
                mask[tile.rows, max(0, edge - margin):edge + margin] = True
    return mask


def _stats(diff: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, 8-bit peak; inf when equal), mean and max absolute difference of ``diff`` (float)."""
    if diff.numel() == 0:
        return {"psnr_db": math.inf, "mean_abs": 0.0, "max_abs": 0.0, "pixels": 0}
    mse = float(diff.square().mean())
    return {
        "psnr_db": math.inf if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2),
        "mean_abs": round(float(diff.abs().mean()), 3),
        "max_abs": float(diff.abs().max()),
        "pixels": int(diff.shape[0]),
    }


def seam_error(tiled: torch.Tensor, untiled: torch.Tensor, tiles: Sequence[Tile],
               margin: int = 8) -> dict[str, dict[str, float]]:
    """Tiled against untiled uint8 frames ``(T, H, W, 3)``: PSNR, mean and max absolute difference over
    the whole frame (``all``), over the seams (:func:`seam_mask`) and over the rest (``away``)."""
    if tiled.shape != untiled.shape or tiled.ndim != 4:
        raise ValueError(f"tiled {tuple(tiled.shape)} and untiled {tuple(untiled.shape)} frames differ in shape")
    diff = tiled.float() - untiled.float()
    seams = seam_mask(tiled.shape[1], tiled.shape[2], tiles, margin)
    per_pixel = diff.permute(1, 2, 0, 3)  # (H, W, T, 3): a mask over (H, W) selects whole pixels
    return {
        "all": _stats(per_pixel.reshape(-1, per_pixel.shape[-2] * 3)),
        "seams": _stats(per_pixel[seams]),
        "away": _stats(per_pixel[~seams]),
    }
