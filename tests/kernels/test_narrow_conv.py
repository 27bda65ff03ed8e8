"""The narrow 3x3 conv kernel (Triton interpreter) against ``F.conv2d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.narrow_conv import DEFAULT_TILE, PADDED_OUTPUTS, NarrowTile, narrow_conv, pack_taps, supported


def _frames(n: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,c,h,w,outputs", [(2, 16, 3, DEFAULT_TILE.block_x + 5, 3), (1, 32, 1, 1, 1),
                                             (3, 16, 4, 2, PADDED_OUTPUTS)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tile", [DEFAULT_TILE, NarrowTile(rows=2, block_x=16)], ids=["default", "2x16"])
def test_matches_conv2d(n, c, h, w, outputs, dtype, bias, tile) -> None:
    """Every border (one-pixel images too), rows and columns across a program's edge, 1 to 16 outputs."""
    x = _frames(n, c, h, w, dtype, seed=c * h + w)
    g = torch.Generator().manual_seed(outputs)
    weight = (torch.randn(outputs, c, 3, 3, generator=g) / (3 * c**0.5)).to(dtype)
    b = torch.randn(outputs, generator=g).to(dtype) if bias else None
    expected = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    got = narrow_conv(x, pack_taps(weight), b, outputs, tile=tile)
    assert got.shape == (n, outputs, h, w) and got.dtype == dtype and got.is_contiguous()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_writes_into_the_frames_of_a_video() -> None:
    """``out`` may be the frames of a ``(3, T, H, W)`` video seen as ``(T, 3, H, W)``, a crop included."""
    x = _frames(4, 16, 5, 6, torch.float32, seed=1)
    weight = torch.randn(3, 16, 3, 3)
    bias = torch.randn(3)
    video = torch.full((3, 4, 5, 9), 7.0)
    out = video[..., :6].transpose(0, 1)
    narrow_conv(x, pack_taps(weight), bias, 3, out=out)
    torch.testing.assert_close(video[..., :6].transpose(0, 1), F.conv2d(x, weight, bias, padding=1),
                               rtol=1e-5, atol=1e-5)
    assert bool((video[..., 6:] == 7.0).all())


def test_pack_taps_layout() -> None:
    weight = torch.arange(2 * 4 * 9, dtype=torch.float32).reshape(2, 4, 3, 3)
    packed = pack_taps(weight)
    assert packed.shape == (9, 4, PADDED_OUTPUTS)
    assert packed[3 * 2 + 1, 3, 1] == weight[1, 3, 2, 1]  # tap (dy=2, dx=1), channel 3, output 1
    assert bool((packed[..., 2:] == 0).all())


def test_refuses_what_it_cannot_run() -> None:
    x = _frames(1, 16, 2, 2, torch.float32, seed=0)
    assert supported(x) and not supported(x.contiguous()) and not supported(_frames(1, 24, 2, 2, torch.float32, 0))
    with pytest.raises(ValueError, match="channels-last"):
        narrow_conv(x.contiguous(), pack_taps(torch.zeros(3, 16, 3, 3)), None, 3)
    with pytest.raises(ValueError, match="3x3 conv to at most"):
        pack_taps(torch.zeros(17, 16, 3, 3))
    with pytest.raises(ValueError, match="packed taps"):
        narrow_conv(x, pack_taps(torch.zeros(3, 16, 3, 3, dtype=torch.float16)), None, 3)
    with pytest.raises(ValueError, match="out must be"):
        narrow_conv(x, pack_taps(torch.zeros(3, 16, 3, 3)), None, 3, out=torch.empty(1, 3, 2, 3))
