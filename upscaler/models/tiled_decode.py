"""Spatially tiled streaming decoding for GPUs with little memory.

The latent plane is cut into overlapping tiles; each tile is decoded by the wrapped decoder with a
stream state of its own, and the tile outputs are blended with feathered weights: inside the
overlap of two tiles the weight of each falls linearly to zero towards its inner edge. ``margin``
latent pixels next to an inner edge get weight zero; when the margin covers the decoder's receptive
field, every pixel only takes values that the tile computed exactly as an untiled decode would, so
the blend equals the untiled decode up to float rounding. (The TCDecoder's receptive field is about
19 latent pixels; the Wan VAE decoder's middle attention spans the whole tile, so tiling it is
always an approximation.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
"""A tile in latent pixels: ``(top, bottom, left, right)``, end-exclusive."""


class StreamingDecoder(Protocol):
    """``TCDecoder`` / ``WanVAEDecoder``: ``decode(latents, *pixel_inputs, state)``."""

    def new_state(self, **kwargs: Any) -> Any: ...

    def decode(self, latents: torch.Tensor, *args: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class TileSpec:
    """Tile side, overlap and discarded margin, in latent pixels (output pixels / ``scale``)."""

    size: int
    overlap: int
    margin: int = 0

    def __post_init__(self) -> None:
        if not 0 <= 2 * self.margin < self.overlap < self.size:
            raise ValueError(f"tiles need 0 <= 2*margin < overlap < size, got {self}")

    @classmethod
    def from_pixels(cls, size: int, overlap: int, margin: int = 0, scale: int = 8) -> TileSpec:
        """A spec from output-pixel sizes (rounded down to whole latent pixels)."""
        return cls(size // scale, overlap // scale, margin // scale)


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``size`` covering ``[0, length)`` with at least ``overlap`` shared;
    the last tile ends exactly at ``length``."""
    if length <= size:
        return [0]
    return [*range(0, length - size, size - overlap), length - size]


def _ramp(length: int, lead: bool, trail: bool, margin: int, ramp: int) -> torch.Tensor:
    """1D blend weight of one tile: zero over ``margin`` then a linear rise over ``ramp`` at each
    inner edge (``lead``: the tile has a neighbour before it, ``trail``: after it)."""
    pos = torch.arange(length, dtype=torch.float32)
    weight = torch.ones(length)
    if lead:
        weight = weight * ((pos - margin + 0.5) / ramp).clamp(0, 1)
    if trail:
        weight = weight * ((length - 1 - pos - margin + 0.5) / ramp).clamp(0, 1)
    return weight


@dataclass
class TiledState:
    """Per-tile decoder states and the blend weights of one stream geometry."""

    decoder_kwargs: dict[str, Any]
    plane: tuple[int, int] | None = None
    """Latent height and width the tiles were planned for."""
    tiles: dict[Box, Any] = field(default_factory=dict)
    weights: dict[Box, torch.Tensor] = field(default_factory=dict)


class TiledDecoder:
    """Wraps a streaming decoder; ``decode`` has the wrapped decoder's signature."""

    def __init__(self, decoder: StreamingDecoder, spec: TileSpec, *, scale: int = 8) -> None:
        self.decoder = decoder
        self.spec = spec
        self.scale = scale

    def new_state(self, **kwargs: Any) -> TiledState:
        """A fresh stream; ``kwargs`` go to the wrapped decoder's ``new_state`` for every tile."""
        return TiledState(decoder_kwargs=kwargs)

    def decode(self, latents: torch.Tensor, *args: Any) -> torch.Tensor:
        """``decode(latents (B, C, t, h, w), *pixel_inputs, state)``: pixel inputs (``(B, C, n, 8h, 8w)``,
        e.g. the TCDecoder's LQ frames) are cut with the latent tiles; the last argument is the
        :class:`TiledState`. Returns the blended ``(B, 3, n', 8h, 8w)`` frames."""
        *pixel_inputs, state = args
        h, w = latents.shape[-2:]
        s = self.scale
        if state.plane is None:
            self._plan(h, w, state, latents.device)
        elif state.plane != (h, w):
            raise ValueError(f"tiled stream planned for a {state.plane} latent plane, got {(h, w)}")
        out = None
        for box, tile_state in state.tiles.items():
            top, bottom, left, right = box
            crops = [p[..., top * s : bottom * s, left * s : right * s] for p in pixel_inputs]
            frames = self.decoder.decode(latents[..., top:bottom, left:right], *crops, tile_state)
            if out is None:
                out = frames.new_zeros((*frames.shape[:3], h * s, w * s))
            weight = state.weights[box]
            if weight.dtype != frames.dtype:  # cast once per stream, not once per pass
                weight = state.weights[box] = weight.to(frames.dtype)
            region = out[..., top * s : bottom * s, left * s : right * s]
            region.add_(frames * weight)
        return out

    def _plan(self, h: int, w: int, state: TiledState, device: torch.device) -> None:
        spec, s = self.spec, self.scale
        rows, cols = tile_starts(h, spec.size, spec.overlap), tile_starts(w, spec.size, spec.overlap)
        ramp, margin = (spec.overlap - 2 * spec.margin) * s, spec.margin * s
        total = torch.zeros(h * s, w * s)
        masks: dict[Box, torch.Tensor] = {}
        for i, top in enumerate(rows):
            bottom = min(h, top + spec.size)
            wy = _ramp((bottom - top) * s, i > 0, i < len(rows) - 1, margin, ramp)
            for j, left in enumerate(cols):
                right = min(w, left + spec.size)
                wx = _ramp((right - left) * s, j > 0, j < len(cols) - 1, margin, ramp)
                box = (top, bottom, left, right)
                masks[box] = wy[:, None] * wx[None, :]
                total[top * s : bottom * s, left * s : right * s] += masks[box]
        state.plane = (h, w)
        for box, mask in masks.items():
            top, bottom, left, right = box
            state.weights[box] = (mask / total[top * s : bottom * s, left * s : right * s]).to(device)
            state.tiles[box] = self.decoder.new_state(**state.decoder_kwargs)
        logger.info(
            "tiled decode: %dx%d latent plane in %d tiles (size %d, overlap %d, margin %d latent px)",
            h, w, len(masks), spec.size, spec.overlap, spec.margin,
        )
