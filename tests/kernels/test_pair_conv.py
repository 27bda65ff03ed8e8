"""The MemBlock pair conv kernel (Triton interpreter) against cuDNN-free PyTorch: stack, conv, bias, ReLU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.frame_pairs import stack_with_previous
from kernels.pair_conv import PairTile, pack_pair_taps, pair_conv, supported

SMALL_TILE = PairTile(rows=2, block_x=8, block_n=16, block_k=16, num_warps=4, num_stages=1)


def _frames(n: int, c: int, h: int, w: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,frames,c,n,h,w", [(1, 3, 16, 16, 3, 11), (2, 2, 32, 24, 4, 5), (1, 1, 16, 16, 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_the_conv_of_the_stacked_pairs(batch, frames, c, n, h, w, dtype, bias) -> None:
    """Each entry's first frame pairs with ``past``, the others with the frame before; every border, tiles
    across rows, columns and output channels, two reduction chunks per half."""
    g = torch.Generator().manual_seed(c + n + h)
    x = _frames(batch * frames, c, h, w, dtype, g)
    past = _frames(batch, c, h, w, dtype, g)
    weight = (torch.randn(n, 2 * c, 3, 3, generator=g) / (3 * (2 * c) ** 0.5)).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    stacked = stack_with_previous(x, past, batch)
    expected = F.conv2d(stacked.double(), weight.double(), None if b is None else b.double(), padding=1).relu()
    got = pair_conv(x, past, batch, pack_pair_taps(weight), b, tile=SMALL_TILE)
    assert got.shape == expected.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_refuses_what_it_cannot_run() -> None:
    g = torch.Generator().manual_seed(0)
    x, past = _frames(2, 16, 2, 3, torch.float32, g), _frames(1, 16, 2, 3, torch.float32, g)
    packed = pack_pair_taps(torch.zeros(16, 32, 3, 3))
    assert supported(x, packed, SMALL_TILE) and not supported(x.contiguous(), packed, SMALL_TILE)
    with pytest.raises(ValueError, match="canonical channels-last frames with channels"):
        pair_conv(x.contiguous(), past, 1, packed, None, tile=SMALL_TILE)
    with pytest.raises(ValueError, match="past"):
        pair_conv(x, past, 2, packed, None, tile=SMALL_TILE)
    with pytest.raises(ValueError, match="frame pairs"):
        pack_pair_taps(torch.zeros(16, 31, 3, 3))
