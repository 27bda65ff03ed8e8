"""The wavelet colour fix's Triton passes (interpreter) against the eager PyTorch chain, bit for bit."""

from __future__ import annotations

import pytest
import torch

from kernels.wavelet import BLOCK_W, wavelet_fix_clamped
from upscaler.color import wavelet_fix


def _reference(content: torch.Tensor, style: torch.Tensor, levels: int) -> torch.Tensor:
    return wavelet_fix(content, style, levels).clamp(-1.0, 1.0).to(content.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # bf16: the interpreter truncates its stores
@pytest.mark.parametrize("frames,height,width,levels", [(2, 5, 7, 5), (1, 9, BLOCK_W + 9, 3), (1, 1, 1, 2),
                                                        (1, 40, 37, 1)])
def test_kernel_equals_the_eager_chain(frames, height, width, levels, dtype) -> None:
    """Dilations past the plane (every tap replicates an edge), widths across a program, one level."""
    g = torch.Generator().manual_seed(height * width)
    content = (torch.randn(1, 3, frames, height, width, generator=g) * 0.7).to(dtype)
    style = (torch.randn(1, 3, frames, height, width, generator=g) * 0.7).to(dtype)
    got = wavelet_fix_clamped(content, style, levels)
    assert got.dtype == dtype and got.is_contiguous()
    assert torch.equal(got, _reference(content, style, levels))


def test_cropped_inputs_of_different_strides() -> None:
    """The decoder's padded output and a window of the LQ frames, both cut to the clip's size."""
    g = torch.Generator().manual_seed(0)
    decoded = torch.rand(1, 3, 4, 24, 40, generator=g) * 2.4 - 1.2  # past [-1, 1]: the clamp shows
    window = torch.rand(1, 3, 7, 20, 36, generator=g) * 2 - 1
    content, style = decoded[:, :, 1:4, :18, :33], window[:, :, 2:5, :18, :33]
    got = wavelet_fix_clamped(content, style)
    assert torch.equal(got, _reference(content.contiguous(), style.contiguous(), 5))
    assert got.abs().max() <= 1.0


def test_batches_and_refusals() -> None:
    content = torch.rand(2, 3, 1, 6, 6) * 2 - 1
    style = torch.rand(2, 3, 1, 6, 6) * 2 - 1
    assert torch.equal(wavelet_fix_clamped(content, style, 2), _reference(content, style, 2))
    with pytest.raises(ValueError, match="one shape"):
        wavelet_fix_clamped(content, style[:, :, :, :5])
    with pytest.raises(ValueError, match="levels"):
        wavelet_fix_clamped(content, style, 0)
