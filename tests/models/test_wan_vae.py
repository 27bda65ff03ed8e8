"""Wan2.1 VAE decoder: official key layout, key classes, streaming == one-shot, frame groups, tiling,
the folded upsampling conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.config import VAEDecoderConfig, load_preset
from upscaler.models.tiled_decode import TiledDecoder, TileSpec
from upscaler.models.upsampled_conv import UpsampledConv
from upscaler.models.wan_vae import AttentionBlock, Resample, WanVAEDecoder, classify_vae_key

SMALL = VAEDecoderConfig(dim=8)


def expected_vae_decoder_keys(z: int, dim: int, mult: tuple[int, ...], blocks: int, up3d: tuple[bool, ...]) -> dict:
    """Key -> shape of the decoder part of the Wan2.1 VAE (``VideoVAE_.conv2`` and ``Decoder3d``),
    from its description; ``up3d`` lists, in decoder order, which upsampling stages are temporal."""
    keys: dict[str, tuple[int, ...]] = {"conv2.weight": (z, z, 1, 1, 1), "conv2.bias": (z,)}

    def conv(prefix: str, n_out: int, n_in: int, kernel: tuple[int, ...]) -> None:
        keys[f"{prefix}.weight"] = (n_out, n_in, *kernel)
        keys[f"{prefix}.bias"] = (n_out,)

    def res(prefix: str, n_in: int, n_out: int) -> None:
        keys[f"{prefix}.residual.0.gamma"] = (n_in, 1, 1, 1)
        conv(f"{prefix}.residual.2", n_out, n_in, (3, 3, 3))
        keys[f"{prefix}.residual.3.gamma"] = (n_out, 1, 1, 1)
        conv(f"{prefix}.residual.6", n_out, n_out, (3, 3, 3))
        if n_in != n_out:
            conv(f"{prefix}.shortcut", n_out, n_in, (1, 1, 1))

    dims = [dim * m for m in (mult[-1], *mult[::-1])]
    conv("decoder.conv1", dims[0], z, (3, 3, 3))
    res("decoder.middle.0", dims[0], dims[0])
    keys["decoder.middle.1.norm.gamma"] = (dims[0], 1, 1)
    conv("decoder.middle.1.to_qkv", 3 * dims[0], dims[0], (1, 1))
    conv("decoder.middle.1.proj", dims[0], dims[0], (1, 1))
    res("decoder.middle.2", dims[0], dims[0])
    index = 0
    for stage in range(len(mult)):
        n_in, n_out = dims[stage] // (2 if stage else 1), dims[stage + 1]
        for _ in range(blocks + 1):
            res(f"decoder.upsamples.{index}", n_in, n_out)
            n_in, index = n_out, index + 1
        if stage < len(mult) - 1:
            conv(f"decoder.upsamples.{index}.resample.1", n_out // 2, n_out, (3, 3))
            if up3d[stage]:
                conv(f"decoder.upsamples.{index}.time_conv", 2 * n_out, n_out, (3, 1, 1))
            index += 1
    keys["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", 3, dims[-1], (3, 3, 3))
    return keys


def make_decoder(cfg: VAEDecoderConfig = SMALL, seed: int = 0) -> WanVAEDecoder:
    """A small decoder with weights that keep activations in range (the attention projection is
    zero-initialised in the reference; here it gets random weights so the test exercises it)."""
    torch.manual_seed(seed)
    model = WanVAEDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5 if p.dim() > 1 else 1 + 0.1 * torch.randn_like(p))
    return model


def latent_chunks(sizes: list[int], h: int = 3, w: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 16, t, h, w, generator=g) for t in sizes]


def test_keys_match_official_layout_at_real_size() -> None:
    cfg = load_preset("wan2.1-1.3b").vae_decoder
    with torch.device("meta"):
        model = WanVAEDecoder(cfg)
    expected = expected_vae_decoder_keys(cfg.z_dim, cfg.dim, cfg.dim_mult, cfg.num_res_blocks, (True, True, False))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert all(classify_vae_key(k) == "decoder" for k in expected)


def test_key_classes() -> None:
    assert classify_vae_key("decoder.head.2.weight") == "decoder"
    assert classify_vae_key("conv2.bias") == "decoder"
    assert classify_vae_key("encoder.downsamples.0.residual.2.weight") == "unused"
    assert classify_vae_key("conv1.weight") == "unused"
    assert classify_vae_key("model.decoder.conv1.weight") == "unknown"
    assert classify_vae_key("conv10.weight") == "unknown"


def test_streaming_equals_one_shot_and_frame_counts() -> None:
    decoder = make_decoder()
    chunks = latent_chunks([6, 2, 2])
    state = decoder.new_state()
    streamed = [decoder.decode(z, state) for z in chunks]
    assert [f.shape[2] for f in streamed] == [21, 8, 8]
    assert streamed[0].shape == (1, 3, 21, 24, 32)
    whole = decoder.decode(torch.cat(chunks, 2), decoder.new_state())
    torch.testing.assert_close(torch.cat(streamed, 2), whole, rtol=0, atol=1e-5)
    inside = whole.abs() < 0.99
    assert inside.float().mean() > 0.25 and whole.min() >= -1 and whole.max() <= 1


def test_one_latent_at_a_time_matches_chunks() -> None:
    """The reference decodes one latent per call: 1 frame for the first, 4 for each later one."""
    decoder = make_decoder()
    z = torch.cat(latent_chunks([6]), 2)
    state = decoder.new_state()
    singles = [decoder.decode(z[:, :, i : i + 1], state) for i in range(z.shape[2])]
    assert [f.shape[2] for f in singles] == [1, 4, 4, 4, 4, 4]
    torch.testing.assert_close(torch.cat(singles, 2), decoder.decode(z, decoder.new_state()), rtol=0, atol=1e-5)


@pytest.mark.parametrize("frames_per_pass", [1, 3])
def test_frame_groups_are_exact(frames_per_pass: int) -> None:
    decoder = make_decoder()
    big, small = decoder.new_state(frames_per_pass=64), decoder.new_state(frames_per_pass=frames_per_pass)
    for z in latent_chunks([6, 2]):
        torch.testing.assert_close(decoder.decode(z, small), decoder.decode(z, big), rtol=0, atol=1e-5)


def test_dtype_and_device_follow_the_module() -> None:
    decoder = make_decoder()
    z = latent_chunks([2])[0]
    reference = decoder.decode(z, decoder.new_state())
    from_double = decoder.decode(z.double(), decoder.new_state())
    assert from_double.dtype == torch.float32 and from_double.device == z.device
    torch.testing.assert_close(from_double, reference, rtol=0, atol=1e-5)
    half = make_decoder().to(torch.bfloat16)
    low = half.decode(z, half.new_state())
    assert low.dtype == torch.bfloat16 and (low.float() - reference).abs().mean() < 0.05


def test_tiled_equals_untiled_for_a_local_decoder() -> None:
    """With the middle attention's output projection at zero (its initial value in the reference)
    the decoder is local, and tiles whose margin covers its receptive field blend exactly."""
    decoder = make_decoder()
    attention = next(m for m in decoder.modules() if isinstance(m, AttentionBlock))
    with torch.no_grad():
        attention.proj.weight.zero_()
    radius = 17  # latent px: 11 3x3x3 convs at latent size, 6 at 2x, 6 at 4x, 7 at 8x
    spec = TileSpec(size=2 * radius + 4, overlap=2 * radius + 2, margin=radius)
    z = latent_chunks([2, 1], h=2, w=spec.size + 2, seed=5)
    tiled = TiledDecoder(decoder, spec)
    plain_state, tiled_state = decoder.new_state(), tiled.new_state()
    for chunk in z:
        torch.testing.assert_close(tiled.decode(chunk, tiled_state), decoder.decode(chunk, plain_state), rtol=0, atol=1e-5)
    assert len(tiled_state.tiles) == 2


def test_tiled_with_attention_stays_close() -> None:
    """The middle attention sees only its tile, so tiling is an approximation (as in the reference)."""
    decoder = make_decoder()
    z = latent_chunks([2], h=4, w=24, seed=6)[0]
    expected = decoder.decode(z, decoder.new_state())
    tiled = TiledDecoder(decoder, TileSpec(size=16, overlap=8, margin=2))
    error = (tiled.decode(z, tiled.new_state()) - expected).abs()
    assert 0 < error.mean() < 0.1 * expected.abs().mean()


def reference_resample(layer: Resample, x: torch.Tensor, caches: dict[int, torch.Tensor]) -> torch.Tensor:
    """The reference's ``Resample``: time doubling, then ``nn.Upsample(mode="nearest-exact")`` and the 3x3 conv."""
    if layer.mode == "upsample3d":
        x = layer._double_time(x, caches)
    b, c, t, h, w = x.shape
    conv = layer.resample[1]
    upsampled = nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact")(x.transpose(1, 2).reshape(b * t, c, h, w))
    frames = F.conv2d(upsampled, conv.weight, conv.bias, padding=1)
    return frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2)


@pytest.mark.parametrize("mode", ["upsample2d", "upsample3d"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_resample_equals_upsample_then_conv(mode: str, batch: int, channels_last: bool) -> None:
    """Two chunks of a stream (the first frame bypasses the time conv), float64, either input layout."""
    torch.manual_seed(0)
    layer = Resample(8, mode).double()
    assert isinstance(layer.resample[1], UpsampledConv) and not list(layer.resample[0].parameters())
    if mode == "upsample3d":
        layer.time_conv.cache_slot = 0
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    chunks = [torch.randn(batch, 8, t, 5, 6, dtype=torch.float64).contiguous(memory_format=fmt) for t in (1, 3, 1)]
    caches: dict[int, torch.Tensor] = {}
    reference_caches: dict[int, torch.Tensor] = {}
    for x in chunks:
        got, want = layer(x, caches), reference_resample(layer, x, reference_caches)
        assert got.shape == want.shape == (batch, 4, want.shape[2], 10, 12)
        assert got.is_contiguous()  # the layout the following 3D convs run in
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_decoder_with_folded_upsampling_equals_upsample_then_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole float64 stream, against every Resample run as the reference's upsample-then-conv."""
    decoder = make_decoder().double()
    chunks = [z.double() for z in latent_chunks([3, 2])]
    state = decoder.new_state(frames_per_pass=3)
    folded = [decoder.decode(z, state) for z in chunks]
    monkeypatch.setattr(Resample, "forward", reference_resample)
    state = decoder.new_state(frames_per_pass=3)
    reference = [decoder.decode(z, state) for z in chunks]
    for got, want in zip(folded, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert reference[0].std(dim=(-2, -1)).mean() > 0.05
