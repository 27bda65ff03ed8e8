"""The LQ projection's tap-stacking kernel (Triton interpreter) against the PyTorch path of ``CausalConv``."""

from __future__ import annotations

import pytest
import torch

from kernels.time_taps import stack_time_taps
from upscaler.models.config import LQProjConfig
from upscaler.models.lq_proj import stacked_taps


def reference(x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Time padding (context or the first frame twice), replicate padding in space, windows of 4
    frames with stride 2 stacked tap-major along channels: ``(B * F, h + 2, w + 2, 4C)``."""
    front = context if context is not None else x[:, :, :1].expand(-1, -1, 2, -1, -1)
    padded = torch.nn.functional.pad(torch.cat([front, x], 2), (1, 1, 1, 1, 0, 0), mode="replicate")
    t = padded.shape[2]
    frames = [torch.cat([padded[:, :, 2 * f + tap] for tap in range(4)], dim=1) for f in range((t - 4) // 2 + 1)]
    return torch.stack(frames, 1).flatten(0, 1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("b,c,t,h,w,channels_last", [(1, 5, 4, 3, 4, False), (2, 70, 2, 2, 33, True), (1, 8, 5, 1, 1, False)])
def test_kernel_matches_the_padded_windows(b, c, t, h, w, channels_last, with_context, dtype) -> None:
    """Channels-first frames (the unshuffled input of the first conv) and channels-last frames (the
    second conv's input), channel counts across block edges, odd frame counts, 1x1 frames."""
    g = torch.Generator().manual_seed(c + t)
    x = torch.randn(b, t, h, w, c, generator=g).to(dtype)
    x = x.permute(0, 4, 1, 2, 3) if channels_last else x.permute(0, 4, 1, 2, 3).contiguous()
    context = torch.randn(b, c, 2, h, w, generator=g).to(dtype) if with_context else None
    got = stack_time_taps(x, context)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.permute(0, 2, 3, 1), reference(x, context))


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("with_context", [False, True])
def test_pytorch_and_kernel_paths_stack_the_same_input(with_context, quantise) -> None:
    """``stacked_taps`` (the PyTorch path on the CPU) and the kernel agree bit for bit, also when both
    quantise to e4m3 with per-channel inverse scales (values past e4m3's range saturate to 448)."""
    c = LQProjConfig().in_dim * 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, c, 4, 3, 5, generator=g) * 3
    context = torch.randn(2, c, 2, 3, 5, generator=g) if with_context else None
    inverse = torch.rand(c, generator=g) * 200 + 1 if quantise else None
    got, want = stack_time_taps(x, context, inverse), stacked_taps(x, context, inverse)
    assert got.dtype == want.dtype == (torch.float8_e4m3fn if quantise else torch.float32)
    assert torch.equal(got.view(torch.uint8) if quantise else got, want.view(torch.uint8) if quantise else want)
    if quantise:
        assert got.float().abs().max() == 448  # some values saturated
        want_values = (reference(x, context).float() * inverse.repeat(4)).clamp(-448, 448).to(torch.float8_e4m3fn)
        assert torch.equal(got.permute(0, 2, 3, 1).view(torch.uint8), want_values.view(torch.uint8))


def test_kernel_rejects_bad_shapes() -> None:
    x = torch.zeros(1, 4, 1, 3, 3)
    with pytest.raises(ValueError, match="fewer than"):
        stack_time_taps(x, torch.zeros(1, 4, 2, 3, 3)[:, :, :0])
    with pytest.raises(ValueError, match="context must be"):
        stack_time_taps(torch.zeros(1, 4, 2, 3, 3), torch.zeros(1, 4, 2, 3, 4))
    with pytest.raises(ValueError, match="inverse_scale must be"):
        stack_time_taps(torch.zeros(1, 4, 2, 3, 3), None, torch.ones(3))
