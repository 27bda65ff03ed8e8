"""Tile grid coverage and alignment; feathered blending reproduces images and hides seams."""

from __future__ import annotations

import pytest
import torch

from upscaler.tiling import FeatherBlender, Tile, axis_spans, tile_grid

GRIDS = [
    # (height, width, tile, overlap, multiple)
    (2160, 3840, 512, 128, 128),
    (1000, 700, 512, 128, 128),
    (300, 256, 256, 128, 128),
    (135, 240, 32, 8, 8),
    (17, 50, 16, 4, 1),
    (64, 64, 128, 32, 8),
]


@pytest.mark.parametrize(("height", "width", "tile", "overlap", "multiple"), GRIDS)
def test_grid_covers_the_plane_aligned_and_overlapping(height: int, width: int, tile: int, overlap: int, multiple: int) -> None:
    tiles = tile_grid(height, width, tile, overlap, multiple)
    cover = torch.zeros(height, width, dtype=torch.int32)
    for t in tiles:
        assert t.y % multiple == 0 and t.x % multiple == 0
        assert 0 < t.height <= tile and 0 < t.width <= tile
        assert t.y + t.height <= height and t.x + t.width <= width
        cover[t.rows, t.cols] += 1
    assert cover.min() >= 1
    for length in (height, width):
        spans = axis_spans(length, tile, overlap, multiple)
        assert spans[0][0] == 0 and sum(spans[-1]) == length
        for (a, na), (b, _) in zip(spans, spans[1:]):
            assert a < b and a + na - b >= overlap
            assert na == tile  # only the last span along an axis may be shorter


def test_plane_smaller_than_a_tile_is_one_tile() -> None:
    assert tile_grid(100, 90, 128, 32, 8) == [Tile(0, 0, 100, 90)]


def test_invalid_grid_arguments() -> None:
    with pytest.raises(ValueError, match="multiple"):
        tile_grid(100, 100, 100, 16, 64)
    with pytest.raises(ValueError, match="no stride"):
        tile_grid(1000, 1000, 256, 200, 128)


def _blend(image: torch.Tensor, tiles: list[Tile], ramp: int, offsets: list[float] | None = None) -> torch.Tensor:
    blender = FeatherBlender(tuple(image.shape), ramp)
    for k, t in enumerate(tiles):
        crop = image[..., t.rows, t.cols]
        blender.add(t, crop + (offsets[k] if offsets else 0.0))
    return blender.result()


def test_constant_and_arbitrary_images_are_reproduced() -> None:
    tiles = tile_grid(135, 240, 64, 16, 8)
    constant = torch.full((1, 3, 2, 135, 240), 0.37)
    torch.testing.assert_close(_blend(constant, tiles, 16), constant, atol=1e-6, rtol=0)
    image = torch.rand(1, 3, 2, 135, 240, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_blend(image, tiles, 16), image, atol=1e-6, rtol=0)


def test_feathering_hides_disagreement_between_tiles() -> None:
    """Tiles that disagree by a constant each (as tiled models do) blend without visible seams."""
    h, w, ramp = 96, 160, 16
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = (0.5 + 0.3 * torch.sin(3 * xs) * torch.cos(2 * ys)).view(1, 1, 1, h, w)
    tiles = tile_grid(h, w, 48, ramp, 8)
    offsets = [0.02 * ((k * 7) % 5 - 2) for k in range(len(tiles))]  # within +-0.04
    out = _blend(smooth, tiles, ramp, offsets)
    error = out - smooth
    assert error.abs().max() <= 0.04 + 1e-6
    spread = max(offsets) - min(offsets)
    steps = torch.cat([error.diff(dim=-1).abs().flatten(), error.diff(dim=-2).abs().flatten()])
    assert steps.max() <= 2 * spread / ramp  # a hard seam would jump by up to `spread`
    # without feathering (ramp 1) the same tiles leave seams
    hard = _blend(smooth, tiles, 1, offsets) - smooth
    assert hard.diff(dim=-1).abs().max() > 4 * spread / ramp


def test_weights_ramp_only_on_interior_edges_and_padding_is_cropped() -> None:
    blender = FeatherBlender((1, 40, 40), ramp=8)
    corner, middle = Tile(0, 0, 24, 24), Tile(16, 16, 24, 24)
    wc = blender.weights(corner)
    assert wc[0, 0] == 1 and wc[:16, :16].min() == 1  # plane borders keep full weight
    assert wc[0, -1] < 0.1 and wc[-1, 0] < 0.1  # inner edges fade out
    wm = blender.weights(middle)
    assert wm[-1, -1] == 1 and wm[0, 0] < 0.01
    blender.add(corner, torch.ones(1, 32, 32))  # e.g. a tile padded up to a multiple
    blender.add(middle, torch.ones(1, 24, 24))
    out = blender.result()
    assert out.shape == (1, 40, 40)
    torch.testing.assert_close(out[0, :24, :24], torch.ones(24, 24))
    assert out[0, 0, 39] == 0  # uncovered pixels stay 0
    with pytest.raises(ValueError, match="smaller than the tile"):
        blender.add(middle, torch.ones(1, 10, 10))


def test_raw_frames_read_ranges_back_map_and_report_errors(tmp_path) -> None:
    from upscaler.tiled import RawFrames

    store = RawFrames(tmp_path / "t.u8", height=3, width=4)
    frames = torch.randint(0, 256, (5, 4, 6, 3), dtype=torch.uint8)  # padded beyond the stored size: cropped
    store.append(frames[:2])
    store.append(frames[2:].numpy())
    assert store.frames == 5
    assert torch.equal(store.read(1, 4), frames[1:4, :3, :4])
    mapped = store.mapped()
    assert mapped.shape == (5, 3, 4, 3) and torch.equal(torch.as_tensor(mapped[4]), frames[4, :3, :4])
    with pytest.raises(RuntimeError, match="ends before frame 7"):
        store.read(3, 7)
    with pytest.raises(ValueError, match="do not cover 3x4x3"):
        store.append(torch.zeros(1, 2, 4, 3, dtype=torch.uint8))


def test_shared_weight_cache_gives_the_same_blend() -> None:
    tiles = tile_grid(40, 64, 32, 8, 8)
    image = torch.rand(2, 40, 64)
    cache: dict[Tile, torch.Tensor] = {}
    results = []
    for shared in (None, cache, cache):
        blender = FeatherBlender((2, 40, 64), ramp=8, weight_cache=shared)
        for tile in tiles:
            blender.add(tile, image[..., tile.rows, tile.cols])
        results.append(blender.result())
    assert set(cache) == set(tiles) and all(torch.equal(results[0], r) for r in results[1:])
    assert FeatherBlender((2, 40, 64), ramp=8, weight_cache=cache).weights(tiles[0]) is cache[tiles[0]]


def test_result_divides_in_place_and_equals_the_previous_formula() -> None:
    """The blended plane is the previous ``sum / weights.clamp_min(1e-12)`` bit for bit, computed in the
    accumulator itself (no second plane); the spent blender refuses more work."""
    tiles = tile_grid(72, 100, 48, 16, 8)
    values = torch.rand(3, 3, 72, 100, generator=torch.Generator().manual_seed(1)) * 255
    blender = FeatherBlender((3, 3, 72, 100), ramp=16)
    for tile in tiles[:-1]:  # the last tile left out: uncovered pixels stay 0
        blender.add(tile, values[..., tile.rows, tile.cols])
    previous = blender._sum / blender._weight.clamp_min(1e-12)
    accumulator = blender._sum.data_ptr()
    out = blender.result()
    assert torch.equal(out, previous) and out.data_ptr() == accumulator
    assert torch.equal(FeatherBlender((1, 8, 8), ramp=2).result(torch.float64), torch.zeros(1, 8, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="result was taken"):
        blender.result()
    with pytest.raises(RuntimeError, match="result was taken"):
        blender.add(tiles[0], values[..., tiles[0].rows, tiles[0].cols])


def test_blend_bytes_counts_the_blenders_buffers() -> None:
    """The blend's memory term is the real buffers' sizes: the accumulators, every tile's weights, and the
    larger of one tile's upload with its float copies and the two uint8 copies of the output."""
    from upscaler.blend_memory import blend_bytes
    from upscaler.tiling import feather_weights

    frames, height, width = 4, 72, 100
    tiles = tile_grid(height, width, 48, 16, 8)
    tile_h, tile_w = max(t.height for t in tiles), max(t.width for t in tiles)
    blender = FeatherBlender((frames, 3, height, width), ramp=16)
    accumulators = blender._sum.nbytes + blender._weight.nbytes
    weights = feather_weights(tiles[0], height, width, 16)
    uploaded = torch.zeros(frames, tile_h, tile_w, 3, dtype=torch.uint8)
    adding = uploaded.nbytes + 2 * uploaded.permute(0, 3, 1, 2).to(weights.dtype).nbytes  # copy, weighted product
    output = 2 * torch.zeros(frames, height, width, 3, dtype=torch.uint8).nbytes  # uint8, channels-last copy
    assert blend_bytes(height, width, len(tiles), tile_h, tile_w, frames) == (
        accumulators + len(tiles) * tile_h * tile_w * weights.element_size() + max(adding, output))
    assert sum(feather_weights(t, height, width, 16).nbytes for t in tiles) <= len(tiles) * tile_h * tile_w * 4
