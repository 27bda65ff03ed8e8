"""Histogram radix select (Triton, interpreter) against torch.topk: the exact k-th largest value."""

from __future__ import annotations

import pytest
import torch

from kernels.triton_select import BLOCK, kth_largest


def _reference(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(x, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)


def _probabilities(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Softmax rows with a block of exact zeros (like the LCSA map outside the neighbourhood)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, cols, generator=g) * 3
    scores[:, : cols // 3] = float("-inf")
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("k", [1, 2, 37, 700, 1400, 2 * BLOCK + 5])
def test_kth_largest_equals_topk(k: int) -> None:
    x = _probabilities(3, 2 * BLOCK + 11, seed=k)  # several blocks per row, a ragged last one
    assert torch.equal(kth_largest(x, k), _reference(x, k))


def test_ties_and_zeros() -> None:
    g = torch.Generator().manual_seed(5)
    x = (torch.randint(0, 4, (2, 3000), generator=g).float() / 4)  # values 0, .25, .5, .75 only
    x[1] = 0.0
    for k in (1, 700, 1500, 2999, 3000):
        assert torch.equal(kth_largest(x, k), _reference(x, k)), k


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="float32"):
        kth_largest(torch.zeros(2, 4, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="out of range"):
        kth_largest(torch.zeros(2, 4), 5)


def test_lcsa_mask_with_the_triton_select_equals_the_torch_one() -> None:
    from kernels.reference import lcsa_block_mask_torch

    g = torch.Generator().manual_seed(2)
    grid = (3, 4)
    q = torch.randn(1, 2, 1 * 12 * 128, 16, generator=g)
    k = torch.randn(1, 2, 3 * 12 * 128, 16, generator=g)
    for topk in (1, 10, 100):
        expected = lcsa_block_mask_torch(q, k, local_range=3, topk=topk, grid=grid)
        got = lcsa_block_mask_torch(q, k, local_range=3, topk=topk, grid=grid, kth_largest=kth_largest)
        assert torch.equal(got, expected) and expected.any()
