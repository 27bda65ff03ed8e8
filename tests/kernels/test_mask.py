"""LCSA block-mask builder against a direct loop implementation of the reference formula."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.reference import local_candidate_columns, local_window_mask, topk_threshold_mask
from tests.kernels.helpers import loop_lcsa_block_mask


def _windows(slices: int, grid: tuple[int, int], d: int, *, seed: int, b: int = 1, h: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, slices * grid[0] * grid[1] * 128, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(
    ("grid", "q_slices", "k_slices", "local_range", "topk"),
    [
        ((2, 3), 1, 1, 3, 5),
        ((2, 3), 2, 2, 3, 20),  # first step: several query slices, same key slices
        ((3, 3), 1, 4, 3, 30),  # steady step: 3 cached key slices + the current one
        ((2, 2), 1, 2, 11, 7),  # neighbourhood wider than the grid
        ((1, 4), 1, 2, 2, 9),  # even local_range: asymmetric window
        ((4, 5), 1, 3, 3, 40),  # neighbourhood under half the grid: selection among its columns only
        ((4, 5), 2, 2, 3, 1000),  # ... with a budget above the candidates (threshold 0)
        ((5, 4), 1, 2, 2, 25),
    ],
)
def test_mask_matches_loop_reference(grid, q_slices, k_slices, local_range, topk):
    q = _windows(q_slices, grid, 16, seed=1, b=2)
    k = _windows(k_slices, grid, 16, seed=2, b=2)
    got = kernels.lcsa_block_mask(q, k, local_range=local_range, topk=topk, grid=grid)
    expected = loop_lcsa_block_mask(q, k, local_range=local_range, topk=topk, grid=grid)
    assert got.dtype == torch.bool
    assert got.shape == (2, 2, q.shape[2] // 128, k.shape[2] // 64)
    assert torch.equal(got, expected)
    assert 0 < int(got.sum()) <= 2 * 2 * q_slices * topk


def test_mask_ties_are_dropped_like_the_reference():
    """Zero queries make every in-window score equal: ties at the threshold are not kept."""
    grid = (2, 3)
    q = torch.zeros(1, 1, 6 * 128, 16, dtype=torch.float64)
    k = _windows(2, grid, 16, seed=3, h=1)
    for topk in (1, 10, 40, 10_000):
        got = kernels.lcsa_block_mask(q, k, local_range=3, topk=topk, grid=grid)
        assert torch.equal(got, loop_lcsa_block_mask(q, k, local_range=3, topk=topk, grid=grid))
    grid = (4, 5)  # the same with the selection restricted to the neighbourhood columns
    q = torch.zeros(1, 1, 20 * 128, 16, dtype=torch.float64)
    k = _windows(2, grid, 16, seed=3, h=1)
    for topk in (1, 40, 300, 500, 10_000):
        got = kernels.lcsa_block_mask(q, k, local_range=3, topk=topk, grid=grid)
        assert torch.equal(got, loop_lcsa_block_mask(q, k, local_range=3, topk=topk, grid=grid))


def test_candidate_columns_hold_every_entry_that_can_be_nonzero():
    grid, local_range, key_slices = (4, 6), 3, 2
    columns = local_candidate_columns(grid, local_range, key_slices, torch.device("cpu"))
    local = local_window_mask(grid, local_range)
    nonzero = local[:, None, :, None].expand(24, key_slices, 24, 2).reshape(24, -1)
    assert columns.shape == (24, key_slices * 9 * 2)
    for row in range(24):
        picked = torch.zeros(nonzero.shape[1], dtype=torch.bool)
        picked[columns[row]] = True
        assert (columns[row].unique().numel() == columns.shape[1]) and not (nonzero[row] & ~picked).any()
    assert local_candidate_columns((3, 3), 3, 1, torch.device("cpu")) is None  # neighbourhood = whole grid


def test_restricted_selection_equals_selection_over_the_whole_row():
    grid, key_slices = (4, 6), 3
    columns = local_candidate_columns(grid, 3, key_slices, torch.device("cpu"))
    local = local_window_mask(grid, 3)[:, None, :, None].expand(24, key_slices, 24, 2).reshape(24, -1)
    gen = torch.Generator().manual_seed(11)
    prob = torch.rand(2, 3, 2 * 24, key_slices * 48, generator=gen).round(decimals=2)  # many ties
    prob = prob * local.repeat(2, 1)
    for topk in (0, 1, 17, 300, 2000, 2591, 5000):
        assert torch.equal(topk_threshold_mask(prob, topk, 2, columns), topk_threshold_mask(prob, topk, 2)), topk


@pytest.mark.parametrize("topk", [0, -1])
def test_mask_nonpositive_topk_keeps_nothing(topk):
    q = _windows(1, (2, 2), 16, seed=4)
    k = _windows(2, (2, 2), 16, seed=5)
    assert not kernels.lcsa_block_mask(q, k, local_range=3, topk=topk, grid=(2, 2)).any()


def test_mask_in_low_precision_matches_reference_on_same_inputs():
    """fp32 inputs: the mask equals the loop formula evaluated on the same (rounded) inputs
    except, at most, entries within float rounding of the threshold."""
    grid = (2, 3)
    q = _windows(1, grid, 32, seed=6).float()
    k = _windows(3, grid, 32, seed=7).float()
    got = kernels.lcsa_block_mask(q, k, local_range=3, topk=25, grid=grid)
    expected = loop_lcsa_block_mask(q.double(), k.double(), local_range=3, topk=25, grid=grid)
    assert (got != expected).sum() <= 2


def test_local_window_mask_normal_slide():
    mask = local_window_mask((3, 4), 3)
    # window (1, 1) sees rows 0..2 and cols 0..2; window (0, 0) sees rows -1..1, cols -1..1 (not clamped)
    assert mask[1 * 4 + 1].view(3, 4).tolist() == [[True, True, True, False]] * 3
    assert mask[0].view(3, 4).tolist() == [[True, True, False, False]] * 2 + [[False] * 4]
    assert torch.equal(mask, mask.T)


def test_mask_rejects_lengths_not_matching_the_grid():
    q = torch.zeros(1, 1, 3 * 128, 16)
    with pytest.raises(ValueError, match="multiples"):
        kernels.lcsa_block_mask(q, q, local_range=3, topk=2, grid=(2, 2))


def test_mask_from_pooled_keys_equals_pooling_the_keys():
    """The streaming cache pools each key slice once; the mask from those pooled keys is the same."""
    from kernels.reference import pool_blocks

    grid = (3, 3)
    q = _windows(1, grid, 16, seed=8).float()
    k = _windows(4, grid, 16, seed=9).float()
    want = kernels.lcsa_block_mask(q, k, local_range=3, topk=30, grid=grid)
    got = kernels.lcsa_block_mask(q, k.to(torch.float8_e4m3fn), local_range=3, topk=30, grid=grid,
                                  k_pooled=pool_blocks(k, 64))
    assert torch.equal(got, want)
