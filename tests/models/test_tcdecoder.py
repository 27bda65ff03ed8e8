"""TCDecoder: official key layout, streaming == one-shot, frame counts, frame groups, tiling, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from upscaler.models.config import TCDecoderConfig, load_preset
from upscaler.models.tcdecoder import TCDecoder, TGrow, _grow
from upscaler.models.tiled_decode import TiledDecoder, TileSpec, tile_starts
from upscaler.models.upsampled_conv import UpsampledConv

SMALL = TCDecoderConfig(channels=(32, 16, 16, 16))


def expected_tcdecoder_keys(channels: tuple[int, ...], in_channels: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of FlashVSR's ``TAEHV(channels, latent_channels=in_channels)`` decoder, built from
    its description: the TAEHV skeleton, then one bias-free 3x3 conv + ReLU inserted after every
    top-level ReLU that follows a conv or a MemBlock (``_apply_identity_deepen``)."""
    c = channels
    skeleton: list[tuple] = [("clamp",), ("conv", in_channels, c[0], True), ("relu",)]
    for i, stride in enumerate((1, 2, 2)):
        skeleton += [("mem", c[i])] * 3
        skeleton += [("up",), ("grow", c[i], stride), ("conv", c[i], c[i + 1], False)]
    skeleton += [("relu",), ("conv", c[3], 3, True)]
    layers: list[tuple] = []
    for layer in skeleton:
        layers.append(layer)
        if layer[0] == "relu" and layers[-2][0] in ("conv", "mem"):
            width = layers[-2][2] if layers[-2][0] == "conv" else layers[-2][1]
            layers += [("conv", width, width, False), ("relu",)]
    keys: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            _, n_in, n_out, bias = layer
            keys[f"decoder.{i}.weight"] = (n_out, n_in, 3, 3)
            if bias:
                keys[f"decoder.{i}.bias"] = (n_out,)
        elif layer[0] == "mem":
            n = layer[1]
            for j, n_in in ((0, 2 * n), (2, n), (4, n)):
                keys[f"decoder.{i}.conv.{j}.weight"] = (n, n_in, 3, 3)
                keys[f"decoder.{i}.conv.{j}.bias"] = (n,)
        elif layer[0] == "grow":
            keys[f"decoder.{i}.conv.weight"] = (layer[1] * layer[2], layer[1], 1, 1)
    return keys


def receptive_radius(decoder: TCDecoder) -> int:
    """Latent pixels of context a TCDecoder output pixel depends on: one pixel per 3x3 conv at its
    own resolution, halved per 2x upsampling before it."""
    radius, scale = 0.0, 1.0
    for layer in decoder.decoder:
        if isinstance(layer, nn.Upsample):
            scale /= 2
        radius += scale * sum(1 for m in layer.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    return math.ceil(radius)


def make_decoder(cfg: TCDecoderConfig = SMALL, seed: int = 0) -> TCDecoder:
    torch.manual_seed(seed)
    return TCDecoder(cfg).eval()


def well_scaled(decoder: TCDecoder) -> TCDecoder:
    """Conv weights of variance 1/fan_in, small biases: PyTorch's default init shrinks the signal at
    every layer, so the output of a default decoder is almost constant and hides layout mistakes."""
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
    return decoder


def stream_inputs(steps: int, h: int = 2, w: int = 3, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Chunks of the engine's schedule: 6 latents + 21 LQ frames, then 2 latents + 8 LQ frames."""
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for step in range(steps):
        t, n = (6, 21) if step == 0 else (2, 8)
        chunks.append((torch.randn(1, 16, t, h, w, generator=g), torch.rand(1, 3, n, 8 * h, 8 * w, generator=g) * 2 - 1))
    return chunks


def test_keys_match_official_layout_at_real_size() -> None:
    cfg = load_preset("wan2.1-1.3b").tcdecoder
    with torch.device("meta"):
        model = TCDecoder(cfg)
    expected = expected_tcdecoder_keys(cfg.channels, cfg.latent_channels + cfg.cond_channels)
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == expected
    assert "decoder.3.weight" in actual and "decoder.24.weight" in actual  # the deepening convs


def test_strict_round_trip_of_state_dict() -> None:
    source, target = make_decoder(seed=0), make_decoder(seed=1)
    target.load_state_dict(source.state_dict(), strict=True)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_streaming_equals_one_shot_and_frame_counts() -> None:
    decoder = make_decoder()
    chunks = stream_inputs(3)
    state = decoder.new_state()
    streamed = [decoder.decode(lat, cond, state) for lat, cond in chunks]
    assert [f.shape[2] for f in streamed] == [21, 8, 8]
    assert streamed[0].shape == (1, 3, 21, 16, 24)
    whole = decoder.decode(torch.cat([c[0] for c in chunks], 2), torch.cat([c[1] for c in chunks], 2), decoder.new_state())
    assert whole.shape[2] == 37
    torch.testing.assert_close(torch.cat(streamed, 2), whole, rtol=0, atol=1e-5)
    assert whole.abs().max() > 1e-3


@pytest.mark.parametrize("frames_per_pass", [1, 3])
def test_frame_groups_are_exact(frames_per_pass: int) -> None:
    decoder = make_decoder()
    chunks = stream_inputs(2)
    big, small = decoder.new_state(frames_per_pass=64), decoder.new_state(frames_per_pass=frames_per_pass)
    for lat, cond in chunks:
        torch.testing.assert_close(decoder.decode(lat, cond, small), decoder.decode(lat, cond, big), rtol=0, atol=1e-5)


def test_first_call_pads_short_conditioning_and_later_calls_need_4t() -> None:
    decoder = make_decoder()
    lat, cond = stream_inputs(1)[0]
    padded = torch.cat([cond[:, :, :1].expand(-1, -1, 3, -1, -1), cond], 2)
    torch.testing.assert_close(decoder.decode(lat, cond, decoder.new_state()), decoder.decode(lat, padded, decoder.new_state()))
    state = decoder.new_state()
    decoder.decode(lat, cond, state)
    with pytest.raises(ValueError, match="conditioning frames"):
        decoder.decode(lat[:, :, :2], cond[:, :, :7], state)
    with pytest.raises(ValueError, match="conditioning frames"):
        decoder.decode(lat, cond[:, :, :17], decoder.new_state())


def test_dtype_and_device_follow_the_module() -> None:
    decoder = make_decoder()
    lat, cond = stream_inputs(1)[0]
    reference = decoder.decode(lat, cond, decoder.new_state())
    from_double = decoder.decode(lat.double(), cond.double(), decoder.new_state())
    assert from_double.dtype == torch.float32 and from_double.device == lat.device
    torch.testing.assert_close(from_double, reference, rtol=0, atol=1e-5)
    half = make_decoder().to(torch.bfloat16)
    low = half.decode(lat, cond, half.new_state())
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max() + 0.05


def test_tile_starts_cover_the_plane() -> None:
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(52, 44, 40) == [0, 4, 8]
    starts = tile_starts(61, 16, 4)
    assert starts[0] == 0 and starts[-1] + 16 == 61
    assert all(b - a <= 12 for a, b in zip(starts, starts[1:]))


def test_tiled_equals_untiled_when_margin_covers_receptive_field() -> None:
    decoder = make_decoder()
    radius = receptive_radius(decoder)
    assert radius == 19
    spec = TileSpec(size=2 * radius + 6, overlap=2 * radius + 2, margin=radius)
    g = torch.Generator().manual_seed(3)
    h, w = 2, spec.size + 8
    chunks = [(torch.randn(1, 16, 2, h, w, generator=g), torch.rand(1, 3, 5, 8 * h, 8 * w, generator=g) * 2 - 1)]
    chunks.append((torch.randn(1, 16, 1, h, w, generator=g), torch.rand(1, 3, 4, 8 * h, 8 * w, generator=g) * 2 - 1))
    tiled = TiledDecoder(decoder, spec)
    plain_state, tiled_state = decoder.new_state(), tiled.new_state(frames_per_pass=2)
    for lat, cond in chunks:
        expected = decoder.decode(lat, cond, plain_state)
        got = tiled.decode(lat, cond, tiled_state)
        assert len(tiled_state.tiles) == 3
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_feathered_seams_stay_local() -> None:
    """Without a margin the tile borders differ from the untiled decode only near the seams."""
    decoder = make_decoder()
    radius = receptive_radius(decoder)
    spec = TileSpec(size=48, overlap=16)
    g = torch.Generator().manual_seed(4)
    h, w = 2, 80
    lat, cond = torch.randn(1, 16, 2, h, w, generator=g), torch.rand(1, 3, 5, 8 * h, 8 * w, generator=g) * 2 - 1
    expected = decoder.decode(lat, cond, decoder.new_state())
    tiled = TiledDecoder(decoder, spec)
    error = (tiled.decode(lat, cond, tiled.new_state()) - expected).abs().amax(dim=(0, 1, 2, 3))
    starts = tile_starts(w, spec.size, spec.overlap)
    assert starts == [0, 32]
    edges = [*starts[1:], *(s + spec.size for s in starts[:-1])]
    near_seam = torch.zeros(8 * w, dtype=torch.bool)
    for edge in edges:
        near_seam[max(0, 8 * (edge - radius)) : 8 * (edge + radius)] = True
    assert (~near_seam).sum() >= 8 * 20 and error[~near_seam].max() < 1e-5
    assert 0 < error.max() < 0.01 * expected.abs().max()


def test_output_conv_pads_channels_only_for_channels_last_input() -> None:
    conv = make_decoder().decoder[-1]
    x = torch.randn(2, conv.in_channels, 6, 7)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    nhwc = conv(x.contiguous(memory_format=torch.channels_last))
    assert nhwc.shape == expected.shape
    torch.testing.assert_close(nhwc, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(-1)  # the cached padded weight follows in-place changes
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_grow_on_channels_last_frames_equals_the_conv_then_split(stride: int) -> None:
    """TGrow on channels-last input (CUDA's layout) writes each time step's frames with one GEMM each;
    it must equal the 1x1 conv to ``stride * c`` channels split into consecutive frames."""
    torch.manual_seed(stride)
    grow = TGrow(6, stride).double()
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    expected = grow.conv(x).detach().reshape(3 * stride, 6, 4, 5)
    with torch.inference_mode():  # as in ``TCDecoder.decode``
        got = _grow(x.contiguous(memory_format=torch.channels_last), grow)
    assert got.shape == expected.shape
    if stride > 1:
        assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(_grow(x, grow).detach(), expected)


def test_in_preferred_format_restrides_one_frame_channels_last_views(monkeypatch: pytest.MonkeyPatch) -> None:
    import upscaler.models.frame_groups as frame_groups

    monkeypatch.setattr(frame_groups, "preferred_format", lambda x: torch.channels_last)  # as on CUDA
    group = torch.randn(1, 3, 4, 5, 8).permute(0, 1, 4, 2, 3)  # (B, T, C, H, W) stored (B, T, H, W, C)
    frame = group.split(1, dim=1)[1].flatten(0, 1)
    assert frame.is_contiguous(memory_format=torch.channels_last) and frame.stride(0) == 8  # the ambiguous view
    fixed = frame_groups.in_preferred_format(frame)
    assert fixed.stride() == (160, 1, 40, 8) and fixed.data_ptr() == frame.data_ptr()
    torch.testing.assert_close(fixed, frame)


def test_output_conv_follows_state_dict_loads_in_inference_mode() -> None:
    """Weights loaded as inference tensors have no version counter: loading must still refresh."""
    x = torch.randn(1, SMALL.channels[-1], 5, 6).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        decoder = make_decoder(seed=0)
        conv = decoder.decoder[-1]
        conv(x)  # fills the padded-weight cache
        decoder.load_state_dict(make_decoder(seed=1).state_dict())
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def _conv_of_upsampled(conv: nn.Conv2d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """The reference order: nearest 2x upsampling, then the 3x3 conv (then the ReLU)."""
    out = nn.Conv2d.forward(conv, nn.Upsample(scale_factor=2)(x))
    return out.relu() if relu else out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_upsampled_conv_equals_conv_of_the_upsampled_image(bias: bool, relu: bool) -> None:
    torch.manual_seed(0)
    conv = UpsampledConv(6, 5, bias=bias).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    out = conv(x, relu=relu)
    assert out.shape == (2, 5, 10, 14)
    torch.testing.assert_close(out, _conv_of_upsampled(conv, x, relu), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        conv.weight.mul_(-1)  # the cached phase weight follows in-place changes
    torch.testing.assert_close(conv(x), _conv_of_upsampled(conv, x), rtol=1e-6, atol=1e-6)


def test_decoder_with_folded_upsampling_equals_the_reference_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole stream, with every UpsampledConv run as upsample-then-conv instead (float64)."""
    decoder = well_scaled(make_decoder()).double()
    chunks = [(lat.double(), cond.double()) for lat, cond in stream_inputs(2)]
    state = decoder.new_state()
    folded = [decoder.decode(lat, cond, state) for lat, cond in chunks]
    monkeypatch.setattr(UpsampledConv, "forward", _conv_of_upsampled)
    state = decoder.new_state()
    reference = [decoder.decode(lat, cond, state) for lat, cond in chunks]
    for got, want in zip(folded, reference):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert reference[0].std(dim=(-2, -1)).mean() > 0.05


def test_relus_after_convs_are_fused_into_the_conv_steps() -> None:
    decoder = make_decoder()
    steps = [step for stage in decoder._stages for step in stage]
    assert not any(isinstance(decoder.decoder[step.index], nn.Upsample) for step in steps)
    assert not any(isinstance(decoder.decoder[step.index], nn.ReLU) for step in steps)
    assert [step.index for step in steps if step.relu] == [1, 3, 22, 24]
    assert sorted(step.index for step in steps) == [
        i for i, layer in enumerate(decoder.decoder) if not isinstance(layer, (nn.Upsample, nn.ReLU))
    ]
