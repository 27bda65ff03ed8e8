"""Colour fix: wavelet keeps the content's detail and the style's colours; AdaIN matches statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from upscaler.color import ColorFix

GAUSS = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _per_frame_wavelet(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Direct per-frame transcription: sum of band differences of the content + final low of the style."""

    def decompose(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # img (C, H, W)
        high, low = torch.zeros_like(img), img
        for level in range(levels):
            r = 2**level
            padded = F.pad(low[:, None], (r, r, r, r), mode="replicate")
            blurred = F.conv2d(padded, GAUSS.view(1, 1, 3, 3), dilation=r)[:, 0]
            high, low = high + (low - blurred), blurred
        return high, low

    out = torch.empty_like(content)
    for b in range(content.shape[0]):
        for t in range(content.shape[2]):
            high, _ = decompose(content[b, :, t])
            _, low = decompose(style[b, :, t])
            out[b, :, t] = (high + low).clamp(-1, 1)
    return out


@pytest.mark.parametrize("size", [(40, 56), (5, 17), (16, 1)], ids=["frame", "smaller-than-dilation", "one-column"])
def test_wavelet_equals_the_per_frame_definition(size: tuple[int, int]) -> None:
    content = torch.rand(2, 3, 4, *size, generator=_gen(0)) * 2 - 1
    style = torch.rand(2, 3, 4, *size, generator=_gen(1)) * 2 - 1
    torch.testing.assert_close(ColorFix("wavelet")(content, style), _per_frame_wavelet(content, style), atol=1e-5, rtol=0)


def test_wavelet_keeps_content_detail_and_style_colours() -> None:
    h = w = 96
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    texture = 0.2 * (((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2) * 2 - 1).float()  # period 2
    c_colour = torch.tensor([0.3, -0.2, 0.1]).view(3, 1, 1) + 0.2 * xs
    s_colour = torch.tensor([-0.1, 0.25, -0.3]).view(3, 1, 1) + 0.15 * ys
    content = (c_colour + texture).view(1, 3, 1, h, w)
    style = s_colour.expand(3, h, w).reshape(1, 3, 1, h, w)
    out = ColorFix("wavelet")(content, style)
    inner = (..., slice(40, -40), slice(40, -40))  # away from the replicate-padded borders
    expected = (s_colour + texture).expand(3, h, w).reshape(1, 3, 1, h, w)
    torch.testing.assert_close(out[inner], expected[inner], atol=1e-5, rtol=0)
    # and measured by frequency band: the low band is the style's, the period-2 band the content's
    assert (out[inner].mean() - style[inner].mean()).abs() < 1e-4
    sign = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 * 2 - 1).float()
    assert ((out * sign)[inner].mean() - 0.2).abs() < 1e-4


def test_adain_matches_style_mean_and_std_per_frame_and_channel() -> None:
    content = torch.rand(1, 3, 5, 32, 48, generator=_gen(2)) * 0.6 - 0.3
    style = torch.rand(1, 3, 5, 32, 48, generator=_gen(3)) * 0.4 + 0.1 * torch.arange(3).view(1, 3, 1, 1, 1) - 0.2
    out = ColorFix("adain")(content, style)
    dims = (-2, -1)
    torch.testing.assert_close(out.mean(dims), style.mean(dims), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dims, unbiased=False), style.std(dims, unbiased=False), atol=1e-4, rtol=1e-3)
    # the content's structure is kept: per frame and channel an increasing affine map of it
    corr = torch.corrcoef(torch.stack([out[0, 1, 2].flatten(), content[0, 1, 2].flatten()]))[0, 1]
    assert corr > 0.9999


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_chunking_invariant(method: str) -> None:
    content = torch.rand(1, 3, 7, 24, 40, generator=_gen(4)) * 2 - 1
    style = torch.rand(1, 3, 7, 24, 40, generator=_gen(5)) * 2 - 1
    fix = ColorFix(method)
    whole = fix(content, style)
    pieces = torch.cat([fix(content[:, :, a:b], style[:, :, a:b]) for a, b in [(0, 1), (1, 5), (5, 7)]], dim=2)
    torch.testing.assert_close(pieces, whole, atol=1e-6, rtol=0)


def test_output_is_clamped_and_keeps_dtype() -> None:
    content = (torch.rand(1, 3, 2, 16, 16, generator=_gen(6)) * 4 - 2).to(torch.bfloat16)
    style = (torch.rand(1, 3, 2, 16, 16, generator=_gen(7)) * 4 - 2).to(torch.bfloat16)
    for method in ("wavelet", "adain"):
        out = ColorFix(method)(content, style)
        assert out.dtype == torch.bfloat16 and out.min() >= -1 and out.max() <= 1


def test_none_and_argument_errors() -> None:
    frames = torch.rand(1, 3, 2, 8, 8)
    assert ColorFix("none")(frames, torch.zeros_like(frames)) is frames
    with pytest.raises(ValueError, match="unknown colour fix"):
        ColorFix("histogram")
    with pytest.raises(ValueError, match="differ in shape"):
        ColorFix("wavelet")(frames, frames[..., :4])
