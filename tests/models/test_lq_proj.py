"""LQ projection: official keys, stream == one-shot, v1 vs v1.1 time context."""

from __future__ import annotations

import pytest
import torch

from tests.models.lq_helpers import CFG, lq_clip, lq_model, stream_lq
from upscaler.models.lq_proj import BufferLQProj, CausalLQProj

CLASSES = (BufferLQProj, CausalLQProj)


def test_keys_are_the_official_ones():
    keys = set(BufferLQProj(CFG).state_dict())
    assert keys == {
        "conv1.weight", "conv1.bias", "norm1.gamma", "conv2.weight", "conv2.bias", "norm2.gamma",
        "linear_layers.0.weight", "linear_layers.0.bias", "linear_layers.1.weight", "linear_layers.1.bias",
    }
    assert BufferLQProj(CFG).state_dict()["norm1.gamma"].shape == (16, 1, 1, 1)
    assert set(CausalLQProj(CFG).state_dict()) == keys


@pytest.mark.parametrize("cls", CLASSES)
@torch.no_grad()
def test_stream_equals_one_shot(cls):
    model = lq_model(cls)
    clip = lq_clip(13)
    outputs = stream_lq(model, clip)
    assert outputs[0] is None
    for out in outputs[1:]:
        assert len(out) == 2 and out[0].shape == (1, 2 * 3, 32)
    streamed = [torch.cat([o[i] for o in outputs[1:]], dim=1) for i in range(2)]
    one_shot = model(clip)
    for a, b in zip(streamed, one_shot):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_v1_calls_are_independent_and_v11_calls_are_causal():
    clip = lq_clip(9)
    changed = clip.clone()
    changed[:, :, 1:5] = lq_clip(4, seed=7)
    for cls, independent in ((BufferLQProj, True), (CausalLQProj, False)):
        model = lq_model(cls)
        last = stream_lq(model, clip)[-1][0]
        last_changed = stream_lq(model, changed)[-1][0]
        assert torch.allclose(last, last_changed) == independent, cls.__name__


def test_frame_counts_are_checked():
    model = lq_model(CausalLQProj)
    with pytest.raises(ValueError, match="takes 1 frame"):
        model.stream(lq_clip(4))
    model.reset()
    assert model.stream(lq_clip(1)) is None
    with pytest.raises(ValueError, match="takes 4 frame"):
        model.stream(lq_clip(2))
    with pytest.raises(ValueError, match="1 \\+ 4n"):
        model(lq_clip(6))


@pytest.mark.parametrize("with_context", [False, True])
@torch.no_grad()
def test_causal_conv_equals_the_padded_conv3d(with_context):
    """The stacked-taps 2D conv computes the reference's replicate-padded Conv3d."""
    conv = lq_model(CausalLQProj).conv1
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, conv.in_channels, 4, 5, 7, generator=g)
    context = torch.randn(2, conv.in_channels, 2, 5, 7, generator=g) if with_context else None
    padded = torch.cat([context, x], 2) if with_context else torch.cat([x[:, :, :1], x[:, :, :1], x], 2)
    padded = torch.nn.functional.pad(padded, (1, 1, 1, 1, 0, 0), mode="replicate")
    expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, stride=(2, 1, 1))
    torch.testing.assert_close(conv(x, context), expected, rtol=1e-4, atol=2e-3)  # sums of 27648 terms ~ 16
    conv.weight.mul_(2)  # the cached stacked weight follows in-place changes
    expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, stride=(2, 1, 1))
    torch.testing.assert_close(conv(x, context), expected, rtol=1e-4, atol=2e-3)
