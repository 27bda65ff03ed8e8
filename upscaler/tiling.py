"""Overlapping spatial tiles and feathered blending of per-tile results.

``tile_grid`` cuts a plane into tiles whose offsets are multiples of ``multiple`` and which overlap
by at least ``overlap``; ``FeatherBlender`` sums tile outputs weighted by linear ramps on the edges
shared with a neighbour (plane borders keep full weight) and divides by the summed weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from upscaler.blend_memory import ACCUMULATOR

ACCUMULATOR_DTYPE: torch.dtype = getattr(torch, ACCUMULATOR)


@dataclass(frozen=True)
class Tile:
    """A rectangle of the plane: rows ``[y, y + height)``, columns ``[x, x + width)``."""

    y: int
    x: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.y, self.y + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.x, self.x + self.width)


def axis_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``(start, size)`` spans covering ``[0, length)``: starts at multiples of ``multiple``, sizes at
    most ``tile``, neighbours sharing at least ``overlap``; the stride is balanced so that the last
    span is not a sliver. One span when ``length <= tile``."""
    if tile % multiple or tile <= 0:
        raise ValueError(f"tile size {tile} must be a positive multiple of {multiple}")
    stride = (tile - overlap) // multiple * multiple
    if overlap < 0 or stride <= 0:
        raise ValueError(f"overlap {overlap} leaves no stride of {multiple} px within tile {tile}")
    if length <= tile:
        return [(0, length)]
    count = 1 + math.ceil((length - tile) / stride)
    stride = math.ceil(math.ceil((length - tile) / (count - 1)) / multiple) * multiple
    spans: list[tuple[int, int]] = []
    for index in range(count):
        start = index * stride
        end = min(start + tile, length)
        if spans and end <= spans[-1][0] + spans[-1][1]:
            continue  # fully inside the previous span
        spans.append((start, end - start))
        if end == length:
            break
    return spans


def tile_grid(height: int, width: int, tile: int, overlap: int, multiple: int = 1,
              tile_height: int | None = None) -> list[Tile]:
    """Row-major tiles of ``tile`` px wide and ``tile_height`` (default ``tile``) px high covering a
    ``height`` x ``width`` plane (see :func:`axis_spans`)."""
    return [
        Tile(y, x, h, w)
        for y, h in axis_spans(height, tile_height or tile, overlap, multiple)
        for x, w in axis_spans(width, tile, overlap, multiple)
    ]


def _ramp(length: int, lead: bool, trail: bool, ramp: int) -> torch.Tensor:
    """1D weight: rises linearly over ``ramp`` px from an inner leading/trailing edge, 1 elsewhere."""
    pos = torch.arange(length, dtype=torch.float32)
    weight = torch.ones(length)
    if lead:
        weight = torch.minimum(weight, (pos + 0.5) / ramp)
    if trail:
        weight = torch.minimum(weight, (length - pos - 0.5) / ramp)
    return weight


def feather_weights(tile: Tile, height: int, width: int, ramp: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The ``(tile.height, tile.width)`` blend weights of ``tile`` in a ``height`` x ``width`` plane: linear
    ramps over ``ramp`` px on its edges inside the plane (plane borders keep full weight)."""
    rows = _ramp(tile.height, tile.y > 0, tile.y + tile.height < height, ramp).to(device, ACCUMULATOR_DTYPE)
    cols = _ramp(tile.width, tile.x > 0, tile.x + tile.width < width, ramp).to(device, ACCUMULATOR_DTYPE)
    return rows[:, None] * cols[None, :]


class FeatherBlender:
    """Accumulates tile results into a ``(..., height, width)`` float32 plane and normalises it in place.

    Each tile's weight ramps linearly over ``ramp`` pixels at its edges that are interior to the
    plane; every weight is positive, so the normalisation is defined everywhere a tile landed and a
    constant input is reproduced exactly (to float rounding). Its GPU memory: :mod:`upscaler.blend_memory`.
    """

    def __init__(self, shape: tuple[int, ...], ramp: int, device: torch.device | str | None = None,
                 weight_cache: dict[Tile, torch.Tensor] | None = None) -> None:
        if ramp <= 0:
            raise ValueError(f"ramp must be positive, got {ramp}")
        self.height, self.width = shape[-2:]
        self.ramp = ramp
        self._sum = torch.zeros(shape, dtype=ACCUMULATOR_DTYPE, device=device)
        self._weight = torch.zeros(self.height, self.width, dtype=ACCUMULATOR_DTYPE, device=device)
        self._cache = {} if weight_cache is None else weight_cache
        self._spent = False

    def weights(self, tile: Tile) -> torch.Tensor:
        """The ``(tile.height, tile.width)`` blend weights of ``tile`` in this plane, on the plane's device;
        kept in the ``weight_cache`` given (blenders of one plane size and ramp may share one: a cached
        weight needs no host-to-device copy, which would wait for the GPU's queue)."""
        if tile not in self._cache:
            self._cache[tile] = feather_weights(tile, self.height, self.width, self.ramp, self._weight.device)
        return self._cache[tile]

    def add(self, tile: Tile, values: torch.Tensor) -> None:
        """Add ``values (..., tile.height, tile.width)`` (extra rows/columns, e.g. padding, are cropped)."""
        values = values[..., : tile.height, : tile.width]
        if values.shape[-2:] != (tile.height, tile.width):
            raise ValueError(f"tile values {tuple(values.shape)} smaller than the tile {tile}")
        self._check_unspent()
        weight = self.weights(tile)
        self._sum[..., tile.rows, tile.cols] += values.to(ACCUMULATOR_DTYPE) * weight
        self._weight[tile.rows, tile.cols] += weight

    def result(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The blended plane (pixels no tile covered are 0), normalised in place in the accumulator (a
        second plane would double the blend's memory): the blender is spent afterwards."""
        self._check_unspent()
        self._spent = True
        return self._sum.div_(self._weight.clamp_min_(1e-12)).to(dtype)

    def _check_unspent(self) -> None:
        if self._spent:
            raise RuntimeError("this blender's result was taken: its sums are normalised in place")
