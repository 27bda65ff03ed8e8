"""The TCDecoder's full-resolution stage in FP8 (``fp8_layers`` ``decoder_full_res``) on the CPU: delayed
per-channel scales from the stream's running maxima, the first call exact, later calls within FP8's error,
the state dict untouched."""

from __future__ import annotations

import copy

import torch

from kernels.fp8_quant import E4M3_MAX
from tests.models.test_tcdecoder import make_decoder, stream_inputs, well_scaled
from upscaler.models.tcdecoder_fp8 import (CONV_INPUT, HEADROOM, OUTPUT_INPUT, QUIET_CHANNEL_FLOOR,
                                           FP8FullResolutionStage, channel_scales,
                                           convert_decoder_full_resolution)
from upscaler.models.wan_vae import WanVAEDecoder


def test_scales_cover_the_headroom_and_give_quiet_channels_room() -> None:
    amax = torch.tensor([2.0, 0.0, 1e-4, 8.0])
    scale, inverse = channel_scales(amax)
    floor = 8.0 * QUIET_CHANNEL_FLOOR
    torch.testing.assert_close(scale * E4M3_MAX / HEADROOM, torch.tensor([2.0, floor, floor, 8.0]))
    torch.testing.assert_close(inverse * scale, torch.ones(4))
    assert torch.equal(amax, torch.tensor([2.0, 0.0, 1e-4, 8.0]))  # the running maxima are left as they were


def _stage(seed: int = 0) -> FP8FullResolutionStage:
    decoder = well_scaled(make_decoder(seed=seed))
    return FP8FullResolutionStage(*decoder.full_resolution_layers(), use_kernels=False)


@torch.no_grad()
def test_first_call_measures_later_calls_quantise_and_saturate_beyond_the_headroom() -> None:
    stage = _stage()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 6, 10, generator=g).relu()
    exact = stage.output(stage.conv(stage.upsampled(x, relu=True)).relu())
    amax: dict[str, torch.Tensor] = {}
    assert torch.equal(stage(x, amax), exact)  # the first call runs the model-dtype layers
    hidden = stage.upsampled(x, relu=True)
    torch.testing.assert_close(amax[CONV_INPUT], hidden.amax(dim=(0, 2, 3)))
    torch.testing.assert_close(amax[OUTPUT_INPUT], stage.conv(hidden).relu().amax(dim=(0, 2, 3)))
    first = {k: v.clone() for k, v in amax.items()}
    got = stage(x, amax)
    error = float((got - exact).norm() / (exact - exact.mean()).norm())
    assert 0 < error < 0.05, error
    assert torch.equal(amax[CONV_INPUT], first[CONV_INPUT])  # the same input: the same maxima (the conv's
    torch.testing.assert_close(amax[OUTPUT_INPUT], first[OUTPUT_INPUT], rtol=0.1, atol=0)  # from e4m3 input)
    louder = stage(x * 2 * HEADROOM, amax)  # beyond the headroom: saturated, and the maxima grow
    assert torch.all(amax[CONV_INPUT] >= first[CONV_INPUT] * 2 * HEADROOM * 0.99)
    loud_exact = stage.output(stage.conv(stage.upsampled(x * 2 * HEADROOM, relu=True)).relu())
    assert float((louder - loud_exact).norm() / (loud_exact - loud_exact.mean()).norm()) > 0.1
    recovered = stage(x * 2 * HEADROOM, amax)  # the next call's scales hold it
    assert float((recovered - loud_exact).norm() / (loud_exact - loud_exact.mean()).norm()) < 0.05


@torch.no_grad()
def test_converted_decoder_streams_close_to_the_model_dtype_one() -> None:
    reference = well_scaled(make_decoder())
    decoder = copy.deepcopy(reference)
    keys = {k: v.clone() for k, v in decoder.state_dict().items()}
    assert convert_decoder_full_resolution(decoder)
    assert decoder.state_dict().keys() == keys.keys()
    chunks = stream_inputs(3)
    state, reference_state = decoder.new_state(frames_per_pass=4), reference.new_state(frames_per_pass=4)
    for step, (latents, cond) in enumerate(chunks):
        got, want = decoder.decode(latents, cond, state), reference.decode(latents, cond, reference_state)
        assert got.shape == want.shape
        error = float((got - want).norm() / (want - want.mean()).norm())
        assert error < 0.05, (step, error)
    assert set(state.channel_amax) == {CONV_INPUT, OUTPUT_INPUT} and not reference_state.channel_amax
    assert not convert_decoder_full_resolution(torch.nn.Module())


def test_the_wan_vae_keeps_its_precision() -> None:
    with torch.device("meta"):
        from upscaler.models.config import load_preset

        vae = WanVAEDecoder(load_preset("small").vae_decoder)
    assert not convert_decoder_full_resolution(vae)
