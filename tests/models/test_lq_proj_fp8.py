"""FP8 convs of the LQ projection (``precision = "fp8"``) on the CPU: static input scales that never
overflow, the emulated product is the dequantised conv, converted projections stay close to bf16's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.models.lq_helpers import CFG, lq_clip, lq_model, stream_lq
from upscaler.models.lq_proj import BufferLQProj, CausalLQProj, stacked_taps
from upscaler.models.lq_proj_fp8 import (FRAME_BOUND, FP8CausalConv, convert_lq_convs, quantise_conv_weight,
                                         stacked_input_scales)

def _features(model, clip):
    """Each streamed call's features (the projection's layers stacked), skipping the priming call."""
    return [torch.cat(o) for o in stream_lq(model, clip)[1:]]


def test_second_conv_scales_hold_the_largest_normalised_input() -> None:
    """A pixel whose channels are one-hot after the norm reaches ``sqrt(C) * |gamma_c|``: exactly e4m3's
    largest value, never beyond; a zero gain still gets room for SiLU's negative minimum."""
    c = 16
    gamma = torch.linspace(-2, 3, c)
    gamma[3] = 0
    scale = stacked_input_scales(4, c, gamma, "cpu")
    assert scale.shape == (4 * c,) and torch.equal(scale[:c], scale[c:2 * c])
    largest = c**0.5 * gamma.abs()
    wide = largest >= 0.2785
    torch.testing.assert_close(largest[wide] / scale[:c][wide], torch.full((int(wide.sum()),), 448.0))
    assert torch.all(0.2785 / scale[:c][~wide] <= 448) and not wide[3]
    frames = stacked_input_scales(4, 3, None, "cpu")
    torch.testing.assert_close(frames * 448, torch.full((12,), FRAME_BOUND))


def test_weight_folds_the_input_scales_tap_major() -> None:
    g = torch.Generator().manual_seed(0)
    weight, input_scale = torch.randn(5, 8, 3, 3, generator=g), torch.rand(8, generator=g) + 0.1
    q, scale = quantise_conv_weight(weight, input_scale)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (5, 72) and scale.shape == (5,)
    dequantised = (q.float() * scale[:, None]).view(5, 3, 3, 8).permute(0, 3, 1, 2) / input_scale.view(1, 8, 1, 1)
    assert float((dequantised - weight).norm() / weight.norm()) < 0.05


@pytest.mark.parametrize("with_context", [False, True])
@torch.no_grad()
def test_emulated_conv_is_the_dequantised_conv(with_context) -> None:
    model = lq_model(CausalLQProj)
    conv = FP8CausalConv(model.conv2, model.norm1.gamma, use_kernel=False)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, CFG.hidden_dim1, 2, 3, 5, generator=g)
    context = torch.randn(1, CFG.hidden_dim1, 2, 3, 5, generator=g) if with_context else None
    got = conv(x, context)
    stacked = stacked_taps(x, context, conv.inverse_input_scale)
    scales = stacked_input_scales(4, CFG.hidden_dim1, model.norm1.gamma, "cpu")
    weight = (conv.weight.float() * conv.weight_scale[:, None]).view(CFG.hidden_dim2, 3, 3, -1).permute(0, 3, 1, 2)
    want = F.conv2d(stacked.float() * scales.view(1, -1, 1, 1), weight / scales.view(1, -1, 1, 1), conv.bias)
    torch.testing.assert_close(got, model.conv2.as_frames(want, 1), rtol=1e-4, atol=1e-4)
    exact = model.conv2(x, context)
    assert 0 < float((got - exact).norm() / exact.norm()) < 0.08


@pytest.mark.parametrize("cls", [BufferLQProj, CausalLQProj])
@torch.no_grad()
def test_converted_projection_stays_close(cls) -> None:
    model = lq_model(cls)
    fp8 = copy.deepcopy(model)
    assert convert_lq_convs(fp8, ("lq_conv1", "lq_conv2", "ffn_up")) == {"lq_conv1", "lq_conv2"}
    assert isinstance(fp8.conv1, FP8CausalConv) and isinstance(fp8.conv2, FP8CausalConv)
    assert fp8.dtype == model.dtype == torch.float32
    clip = lq_clip(9)
    for want, got in zip(_features(model, clip), _features(fp8, clip)):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert 0 < float((got - want).norm() / want.norm()) < 0.08


def test_only_the_named_convs_convert() -> None:
    model = lq_model(CausalLQProj)
    assert convert_lq_convs(model, ("self_qkv",)) == frozenset()
    assert convert_lq_convs(model, ("lq_conv2",)) == {"lq_conv2"}
    assert not isinstance(model.conv1, FP8CausalConv) and isinstance(model.conv2, FP8CausalConv)
    assert model.conv2.weight.dtype == torch.float8_e4m3fn and model.conv2.bias.dtype == torch.float32
