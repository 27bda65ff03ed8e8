"""LQ batches of a tile: upscaling only the input region a tile needs equals cutting the tile out of the
whole upscaled frame, bit for bit."""

from __future__ import annotations

import pytest
import torch

from upscaler.frame_source import lq_batches, tile_source_crop
from upscaler.geometry import Geometry
from upscaler.resize import pad_to_size, to_model_input
from upscaler.tiling import Tile, tile_grid


def _frames(width: int, height: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(width * 1000 + height)
    return [torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g) for _ in range(count)]


def _whole_frame_tile(frames, geometry: Geometry, tile: Tile, multiple: int) -> torch.Tensor:
    x = to_model_input(torch.stack(frames), size=geometry.out_size, dtype=torch.float32)
    x = x[:, :, :, tile.y:tile.y + tile.height, tile.x:tile.x + tile.width]
    return pad_to_size(x, -(-tile.height // multiple) * multiple, -(-tile.width // multiple) * multiple, "replicate")


@pytest.mark.parametrize(("in_size", "scale"), [((40, 24), 4), ((37, 23), 2), ((21, 13), 8), ((50, 30), 1)])
def test_tile_crops_equal_the_whole_frame(in_size, scale):
    geometry = Geometry.for_scale(in_size, scale, 16)
    frames = _frames(*in_size, 3)
    tiles = tile_grid(geometry.out_height, geometry.out_width, 32, 16, 16)
    assert len(tiles) > 2  # interior tiles (crop edges inside the frame) and border tiles
    for tile in tiles:
        assert tile_source_crop(geometry, tile) is not None
        (got,) = lq_batches(frames, geometry, device=torch.device("cpu"), dtype=torch.float32, pad_mode="replicate",
                            multiple=16, tile=tile)
        assert torch.equal(got, _whole_frame_tile(frames, geometry, tile, 16)), tile


def test_non_integer_or_uneven_scales_upscale_the_whole_frame():
    tile = Tile(0, 0, 32, 32)
    assert tile_source_crop(Geometry.for_target((40, 24), (100, 60), 16), tile) is None  # 2.5x
    assert tile_source_crop(Geometry.for_target((40, 24), (80, 72), 16), tile) is None  # 2x by 3x
    assert tile_source_crop(Geometry.for_scale((40, 24), 3, 16), tile) is None  # 1/3 is not exact in floats
    geometry = Geometry.for_target((40, 24), (100, 60), 16)
    frames = _frames(40, 24, 2)
    (got,) = lq_batches(frames, geometry, device=torch.device("cpu"), dtype=torch.float32, pad_mode="replicate",
                        multiple=16, tile=tile)
    assert torch.equal(got, _whole_frame_tile(frames, geometry, tile, 16))


def test_crop_spans_keep_two_input_pixels_of_margin():
    geometry = Geometry.for_scale((960, 540), 4, 128)
    rows, cols, scale = tile_source_crop(geometry, Tile(576, 704, 1024, 1024))
    assert scale == 4 and (rows.start, rows.stop) == (142, 402) and (cols.start, cols.stop) == (174, 434)
    rows, cols, _ = tile_source_crop(geometry, Tile(1152, 2816, 1008, 1024))
    assert (rows.start, rows.stop) == (286, 540) and (cols.start, cols.stop) == (702, 960)  # clamped at the border
