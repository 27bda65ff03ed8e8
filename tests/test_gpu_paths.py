"""GPU-only checks (skipped on CPU-only machines such as CI): the optimised paths keep the output of
the plain path. Run on a GPU with ``pytest -q -m gpu``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.media import make_clip
from upscaler.api import Upscaler
from upscaler.geometry import Geometry
from upscaler.models import fusion
from upscaler.settings import load_settings
from upscaler.timing import StageTimer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def upscaler(small_checkpoints) -> Upscaler:
    files = small_checkpoints("v1.1")
    return Upscaler.load(load_settings(weights=str(files.dit.parent), model_preset="small", device="cuda"))


def _run(upscaler: Upscaler, src) -> torch.Tensor:
    geometry = Geometry.for_target((160, 96), (640, 384), 128)
    frames = upscaler.upscale_frames(src, geometry, upscaler.settings.variant("tiny"), timer=StageTimer(upscaler.device))
    return torch.cat(list(frames)).float()


def test_compiled_elementwise_chains_keep_the_output(upscaler, tmp_path):
    src = make_clip(tmp_path / "in.mp4", width=160, height=96, frames=29)
    eager = _run(upscaler, src)
    fusion.set_enabled(True)
    try:
        compiled = _run(upscaler, src)
    finally:
        fusion.set_enabled(False)
    diff = (compiled - eager).abs()
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean().item(), diff.max().item())  # uint8 levels, bf16 noise


@pytest.mark.parametrize("kv_cache", ["fp8", "fp8-qk", "fp8 + FP8 attention"])
def test_fp8_cache_stays_close_to_bf16(upscaler, tmp_path, kv_cache):
    """The FP8 cache (dequantised, FP8 Q.K^T, or both products in FP8 by the sm_90 kernel: the linears
    stay bf16 here, ``fp8_layers`` empty) against the bf16 cache on a 29-frame clip."""
    src = make_clip(tmp_path / "in.mp4", width=160, height=96, frames=29)
    reference = _run(upscaler, src)
    base = upscaler.settings
    attention = kv_cache.endswith("FP8 attention")
    try:
        upscaler.settings = replace(base, kv_cache_dtype=kv_cache.split()[0], precision="fp8" if attention else "bf16",
                                    fp8_layers=(), fp8_attention=attention)
        if attention and not upscaler.engine(base.variant("tiny"), 640 * 384).options.fp8_attention:
            pytest.skip("FP8 attention needs an sm_90 GPU")
        fp8 = _run(upscaler, src)
    finally:
        upscaler.settings = base
    diff = (fp8 - reference).abs()
    print(f"{kv_cache} vs bf16 K/V cache, uint8 levels: mean {diff.mean():.3f} max {diff.max():.0f}")
    assert diff.mean() < 2.0, diff.mean().item()


def test_fused_decoder_convs_keep_the_output():
    """CUDA bf16 channels-last TCDecoder (cuDNN conv+bias+ReLU(+add), folded upsampling with the Triton
    interleave) against the same weights decoded in float64 on the CPU with the plain ops."""
    from tests.models.test_tcdecoder import make_decoder, well_scaled
    from upscaler.models.config import TCDecoderConfig

    decoder = well_scaled(make_decoder(TCDecoderConfig(channels=(64, 32, 32, 32))))
    g = torch.Generator().manual_seed(1)
    chunks = [(torch.randn(1, 16, t, 6, 10, generator=g), torch.rand(1, 3, n, 48, 80, generator=g) * 2 - 1)
              for t, n in ((6, 21), (2, 8))]
    reference_state = decoder.double().new_state()
    reference = [decoder.decode(lat.double(), cond.double(), reference_state) for lat, cond in chunks]
    decoder = decoder.to("cuda", torch.bfloat16)
    state = decoder.new_state()
    fused = [decoder.decode(lat.cuda(), cond.cuda(), state) for lat, cond in chunks]
    for got, want in zip(fused, reference):
        err = (got.double().cpu() - want).abs()
        spread = want.std(dim=(-2, -1)).mean()
        print(f"fused bf16 decoder vs float64: max {err.max():.4f} mean {err.mean():.5f}, spatial std {spread:.3f}")
        assert spread > 0.05 and err.mean() < 0.05 * spread and err.max() < 0.05 * want.abs().max()


def test_feed_forward_with_gelu_epilogue_equals_the_module():
    """The cuBLASLt GELU epilogue is the tanh GELU of the checkpoint's FFN (fp32: the exact-erf GELU
    would differ by ~1e-4)."""
    from torch import nn

    from upscaler.models.dit import feed_forward

    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(64, 256), nn.GELU(approximate="tanh"), nn.Linear(256, 64)).cuda()
    x = torch.randn(2, 300, 64, device="cuda") * 3
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.testing.assert_close(feed_forward(ffn, x), ffn(x), rtol=1e-5, atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    ffn, x = ffn.to(torch.bfloat16), x.to(torch.bfloat16)
    torch.testing.assert_close(feed_forward(ffn, x), ffn(x), rtol=2e-2, atol=2e-2)


def test_gpu_memory_does_not_grow_from_clip_to_clip(upscaler, tmp_path):
    """With Python's cyclic collector off, consecutive clips leave the same memory allocated on the GPU
    (a reference cycle once kept each finished clip's decoder state there)."""
    import gc

    src = make_clip(tmp_path / "in.mp4", width=160, height=96, frames=29)
    _run(upscaler, src)
    gc.collect()
    gc.disable()
    try:
        resident = []
        for _ in range(3):
            _run(upscaler, src)
            torch.cuda.synchronize()
            resident.append(torch.cuda.memory_allocated())
    finally:
        gc.enable()
    assert max(resident) - min(resident) < 2**20, resident  # the old cycle kept ~8 MB per clip at this size


@pytest.mark.parametrize("version", ["v1", "v1.1"])
def test_lq_projection_stream_on_cuda_matches_float64(version):
    """The CUDA LQ projection (time taps stacked by the Triton kernel, cuDNN 2D convs, bf16) against the
    same weights streamed in float64 on the CPU with the PyTorch padding path."""
    from tests.models.lq_helpers import lq_clip, lq_model, stream_lq
    from upscaler.models.lq_proj import LQ_PROJ_CLASSES

    model = lq_model(LQ_PROJ_CLASSES[version])
    clip = lq_clip(13)
    with torch.no_grad():
        reference = stream_lq(model.double(), clip.double())
        got = stream_lq(model.to("cuda", torch.bfloat16), clip.cuda())
    assert reference[0] is None and got[0] is None
    for want_layers, got_layers in zip(reference[1:], got[1:]):
        for want, out in zip(want_layers, got_layers):
            err = (out.double().cpu() - want).abs()
            print(f"LQ projection {version} bf16 CUDA vs float64: max {err.max():.4f}, output std {want.std():.3f}")
            assert err.max() < 0.05 * want.abs().max() and err.mean() < 0.02 * want.std()


@pytest.mark.parametrize("channels", [2048, 3072])
def test_lq_conv_epilogue_kernel_is_closer_to_float64_than_the_eager_chain(channels):
    """The LQ projection's bias + channel RMS norm + SiLU kernel and the eager bf16 chain it replaces,
    both against float64 on the same bf16 inputs: the kernel (fp32, one rounding) is no further off."""
    from kernels.channel_norm import bias_norm_silu_
    from upscaler.models.lq_proj import ChannelRMSNorm

    g = torch.Generator().manual_seed(channels)
    norm = ChannelRMSNorm(channels)
    with torch.no_grad():
        norm.gamma.copy_(1 + 0.3 * torch.randn(channels, 1, 1, 1, generator=g))
    x = (3 * torch.randn(2, 64, 96, channels, generator=g)).to(torch.bfloat16).permute(0, 3, 1, 2)
    bias = torch.randn(channels, generator=g).to(torch.bfloat16)
    norm_bf16 = ChannelRMSNorm(channels).to(torch.bfloat16)
    with torch.no_grad():
        norm_bf16.gamma.copy_(norm.gamma)

        def chain(module, x, bias):
            return torch.nn.functional.silu(module((x + bias.view(1, -1, 1, 1)).unsqueeze(2))).squeeze(2)

        exact = chain(norm.double(), x.double(), bias.double())
        eager = chain(norm_bf16.cuda(), x.cuda(), bias.cuda()).double().cpu()
        got = bias_norm_silu_(x.cuda().contiguous(memory_format=torch.channels_last), bias.cuda(),
                              norm_bf16.gamma, norm_bf16.scale).double().cpu()
    err_kernel, err_eager = (got - exact).abs(), (eager - exact).abs()
    print(f"LQ conv epilogue ({channels} channels, bf16) vs float64: kernel max {err_kernel.max():.4f} mean "
          f"{err_kernel.mean():.2e}, eager chain max {err_eager.max():.4f} mean {err_eager.mean():.2e}")
    assert err_kernel.max() <= err_eager.max() and err_kernel.mean() <= err_eager.mean()


def test_subpixel_conv_kernel_is_as_close_to_float64_as_the_phase_conv_at_the_real_width():
    """The last stage's upsampled conv (128 channels to 128, ReLU) on a crop of wider frames, against the
    path it replaces (cuDNN's 2x2 phase conv + interleave): both multiply by the same bf16 phase taps (sums
    of 3x3 taps, rounded once, which cuDNN's 3x3 conv of the upsampled image does not)."""
    import torch.nn.functional as F

    from kernels.subpixel import interleave_phases
    from kernels.subpixel_conv import pack_phase_taps, subpixel_conv
    from upscaler.models.upsampled_conv import phase_weight

    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(2, 128, 40, 160, generator=g, device="cuda").relu_().to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)[..., :150]
    weight = (torch.randn(128, 128, 3, 3, generator=g, device="cuda") / 34).to(torch.bfloat16)
    want = F.conv2d(F.interpolate(x, scale_factor=2).double().cpu(), weight.double().cpu(), None, padding=1).relu()
    phases = phase_weight(weight)
    before = interleave_phases(F.conv2d(x, phases.contiguous(memory_format=torch.channels_last), None, padding=1),
                               40, 150, relu=True)
    got = subpixel_conv(x, pack_phase_taps(phases), None, relu=True)
    _as_close_to_float64(got, before, want, "sub-pixel conv", "phase conv + interleave")


def test_output_conv_kernel_is_as_close_to_float64_as_cudnn_at_the_real_width():
    """The decoder's last conv (128 channels to 3, bias) on a crop of wider frames, through the module,
    against cuDNN padded to 8 channels (on an H100 the kernel rounded correctly where cuDNN did not in a
    third of the pixels)."""
    import torch.nn.functional as F

    from upscaler.models.tcdecoder import OutputConv

    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(3, 128, 70, 400, generator=g, device="cuda").relu_().to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)[..., 1:390]
    conv = OutputConv(128, 3).to("cuda", torch.bfloat16)
    want = F.conv2d(x.double().cpu(), conv.weight.double().cpu(), conv.bias.double().cpu(), padding=1)
    got = conv(x)
    cudnn = F.conv2d(x.contiguous(memory_format=torch.channels_last), conv._padded_weight(conv.weight),
                     conv._padded_bias(conv.bias), padding=1)[:, :3]
    assert got.shape == (3, 3, 70, 389) and got.is_contiguous()
    _as_close_to_float64(got, cudnn, want, "output conv", "cuDNN bf16")


def _as_close_to_float64(got: torch.Tensor, baseline: torch.Tensor, want: torch.Tensor, label: str,
                         baseline_label: str) -> None:
    """A conv kernel's error against float64 ``want`` within 5% of ``baseline``'s on the mean and 2x on
    the max (both round an fp32 sum once, in a different order, so a tie may round the other way)."""
    err_kernel, err_baseline = (got.double().cpu() - want).abs(), (baseline.double().cpu() - want).abs()
    print(f"{label} vs float64: max {err_kernel.max():.2e} mean {err_kernel.mean():.2e}; "
          f"{baseline_label}: max {err_baseline.max():.2e} mean {err_baseline.mean():.2e}")
    assert err_kernel.mean() <= 1.05 * err_baseline.mean() and err_kernel.max() <= 2 * err_baseline.max()


def test_pixels_kernel_equals_the_pytorch_chain_on_cropped_bf16_frames():
    from kernels.pixels import pixels, pixels_torch

    frames = (torch.randn(3, 4, 272, 480) * 0.7).to("cuda", torch.bfloat16)[:, :, :270, :475]
    assert torch.equal(pixels(frames), pixels_torch(frames))


def test_norm_rope_kernel_matches_the_pytorch_chain_at_the_real_width():
    """The Triton q/k RMSNorm + RoPE against the eager PyTorch chain, bf16, 12 heads of 128."""
    from upscaler.models.attention import _norm_rope, _norm_rope_torch
    from upscaler.models.rope import Rope3D

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 4096, 1536, generator=g) * 4).to("cuda", torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(1536, generator=g)).to("cuda", torch.bfloat16)
    positions = torch.randint(0, 60, (4096, 3), generator=g).cuda()
    cos, sin = Rope3D(128).tables(positions, time_offset=4)
    got = _norm_rope(x, weight, 1e-6, 12, cos, sin)
    expected = _norm_rope_torch(x, weight, 1e-6, 12, cos, sin)
    err = (got.float() - expected.float()).abs()
    print(f"norm+RoPE kernel vs PyTorch (bf16): max {err.max():.4f}, mismatching {(err > 0).float().mean():.2%}")
    torch.testing.assert_close(got, expected, rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.parametrize("mode", ["norm", "gated-add-affine", "add"])
def test_fused_layer_norm_matches_the_eager_block_at_the_real_width(mode):
    """The Triton residual add + layer norm against the eager expressions of a Wan block, bf16, dim 1536."""
    import torch.nn.functional as F

    from upscaler.models.dit import _add_norm

    g = torch.Generator().manual_seed(2)
    x, update = ((torch.randn(1, 4096, 1536, generator=g) * 3).to("cuda", torch.bfloat16) for _ in range(2))
    gate, scale, shift = ((torch.randn(1, 1, 1536, generator=g) * 0.5 + o).to("cuda", torch.bfloat16) for o in (0, 1, 0))
    affine = mode.endswith("affine")
    scale_, shift_ = (scale.flatten(), shift.flatten()) if affine else (scale, shift)
    got_x, got_y = _add_norm(x, scale_, shift_, 1e-6, update=None if mode == "norm" else update,
                             gate=gate if mode.startswith("gated") else None, affine=affine)
    want_x = x if mode == "norm" else (x + gate * update if mode.startswith("gated") else x + update)
    want_y = (F.layer_norm(want_x, (1536,), scale_, shift_, 1e-6) if affine
              else F.layer_norm(want_x, (1536,), eps=1e-6) * scale + shift)
    assert torch.equal(got_x, want_x)
    err = (got_y.float() - want_y.float()).abs()
    mismatching = (err > 0).float().mean().item()
    print(f"fused layer norm ({mode}) vs eager: max {err.max():.4f}, mismatching {mismatching:.3%}")
    torch.testing.assert_close(got_y, want_y, rtol=1.6e-2, atol=3.2e-2)
    assert mismatching < 0.01, "the kernel skips a rounding of the eager expression (contracted multiply-add?)"


@pytest.mark.parametrize("split, pairs", [(2, 1), (2, 2), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_warp_specialised_attention_matches_float64(split, pairs, dtype, head_dim):
    """The Gluon kernel (sm_90 only) against float64 attention over the kept blocks: queries in the DiT's
    (B, L, H, D) memory, K/V the filled part of a ring buffer, an empty and a full row, longer rows
    than the stage ring, odd and even counts (tiles of two kept blocks mask an odd tail)."""
    from kernels import gluon_sparse
    from kernels.triton_sparse import compact_block_lists

    g = torch.Generator(device="cuda").manual_seed(head_dim + split + pairs)
    q = torch.randn(2, 4 * 128, 3, head_dim, device="cuda", generator=g).to(dtype).transpose(1, 2)
    ring_k, ring_v = (torch.randn(2, 3, 32 * 64, head_dim, device="cuda", generator=g).to(dtype) for _ in range(2))
    k, v = ring_k[:, :, : 23 * 64], ring_v[:, :, : 23 * 64]
    if not gluon_sparse.supported(q, k, v):
        pytest.skip("the warp-specialised kernel needs an sm_90 GPU")
    mask = torch.rand(2, 3, 4, 23, device="cuda", generator=g) < 0.4
    mask[0, 0, 0] = False
    mask[1, 2, 3] = True
    tokens = mask.repeat_interleave(128, 2).repeat_interleave(64, 3)
    scores = q.double() @ k.double().transpose(-1, -2) / head_dim**0.5
    expected = torch.softmax(scores.masked_fill(~tokens, float("-inf")), -1).nan_to_num(0) @ v.double()
    idx, cnt, order = compact_block_lists(mask)
    options = {"split": split, "num_warps": 8 // split, "pairs": pairs, "stages": 3 if pairs > 1 else 4}
    got = gluon_sparse.sparse_attention_gluon(q, k, v, idx, cnt, order, options=options)
    assert got.stride() == q.stride() and got.dtype == dtype
    err = float((got.double() - expected).abs().max())
    print(f"warp-specialised attention {options} {dtype} D {head_dim}: max abs error {err:.2e}")
    assert err < (2e-2 if dtype == torch.bfloat16 else 4e-3)
    assert torch.equal(got[0, 0, :128], torch.zeros_like(got[0, 0, :128]))


def _fp8_roundings_emulated(q: torch.Tensor, kv, tokens: torch.Tensor) -> torch.Tensor:
    """Attention in float64 with the FP8 kernel's roundings applied once, over the final row max: each
    query row to e4m3 by its absolute maximum, each probability (times 256 x its slice's value scale /
    the head's largest) to e4m3."""
    k, v = kv.dequantized(torch.float64)
    qf = q.float()
    q_scale = qf.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 448.0
    q8 = (qf / q_scale).to(torch.float8_e4m3fn).double() * q_scale.double()
    scores = (q8 @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~tokens, float("-inf"))
    p = torch.exp(scores - scores.amax(-1, keepdim=True)).nan_to_num(0)
    slices = k.shape[2] // kv.slice_len
    v_scale = kv.value_scales[:slices].t().double().repeat_interleave(kv.slice_len, 1)  # (H, L)
    factor = (256.0 * v_scale / v_scale.amax(-1, keepdim=True))[None, :, None, :]
    p8 = (p * factor).float().to(torch.float8_e4m3fn).double() / factor
    return (p8 @ v) / p.sum(-1, keepdim=True).clamp_min(1e-300)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_fp8_attention_kernel_matches_float64(dtype, head_dim):
    """The FP8 kernel (sm_90 only) against float64 attention over the dequantised FP8 keys and values:
    queries in the DiT's (B, L, H, D) memory, keys and transposed values the filled part of ring
    buffers, four time slices with their own scales, an empty and a full row, odd and even counts, a
    row of one block, rows longer than the stage ring. Its error must be FP8's own: no larger than that
    of the same roundings applied once in float64 (the kernel rounds probabilities against the running
    row max, so the two differ in detail, not in size)."""
    from kernels import gluon_sparse_fp8
    from kernels.reference import FP8KeysValues, quantize_slices
    from kernels.triton_sparse import compact_block_lists

    g = torch.Generator(device="cuda").manual_seed(head_dim)
    q = torch.randn(2, 4 * 128, 3, head_dim, device="cuda", generator=g).to(dtype).transpose(1, 2)
    slice_len, slices, ring = 6 * 64, 4, 5
    raw_k, raw_v = (torch.randn(2, 3, slices * slice_len, head_dim, device="cuda", generator=g) for _ in range(2))
    raw_v *= torch.tensor([0.5, 1.0, 3.0, 0.1], device="cuda").repeat_interleave(slice_len)[:, None]  # uneven scales
    (k8, ks), (v8, vs) = quantize_slices(raw_k, slice_len), quantize_slices(raw_v, slice_len)
    ring_k = torch.empty(2, 3, ring * slice_len, head_dim, device="cuda", dtype=k8.dtype)
    ring_vt = torch.empty(2, 3, head_dim, ring * slice_len, device="cuda", dtype=v8.dtype)
    end = slices * slice_len
    ring_k[:, :, :end].view(torch.uint8).copy_(k8.view(torch.uint8))
    ring_vt[:, :, :, :end].view(torch.uint8).copy_(v8.transpose(2, 3).view(torch.uint8))
    kv = FP8KeysValues(ring_k[:, :, :end], ring_vt[:, :, :, :end], ks, vs, slice_len)
    if not gluon_sparse_fp8.supported(q, kv):
        pytest.skip("the FP8 attention kernel needs an sm_90 GPU")
    k, v = kv.dequantized(torch.float64)
    mask = torch.rand(2, 3, 4, end // 64, device="cuda", generator=g) < 0.45
    mask[0, 0, 0] = False
    mask[1, 2, 3] = True
    mask[0, 1, 1] = False
    mask[0, 1, 1, 7] = True  # one kept block: a single tile whose second half repeats it
    tokens = mask.repeat_interleave(128, 2).repeat_interleave(64, 3)
    scores = q.double() @ k.transpose(-1, -2) / head_dim**0.5
    expected = torch.softmax(scores.masked_fill(~tokens, float("-inf")), -1).nan_to_num(0) @ v
    emulated = _fp8_roundings_emulated(q, kv, tokens)
    idx, cnt, order = compact_block_lists(mask)
    got = gluon_sparse_fp8.sparse_attention_gluon_fp8(q, kv, idx, cnt, order)
    assert got.stride() == q.stride() and got.dtype == dtype
    err, fp8_err = (got.double() - expected).abs(), (emulated - expected).abs()
    print(f"FP8 attention {dtype} D {head_dim}: max abs error {err.max():.2e}, mean {err.mean():.2e}; the roundings "
          f"emulated once: max {fp8_err.max():.2e}, mean {fp8_err.mean():.2e}; outputs' mean magnitude "
          f"{expected.abs().mean():.2e}")
    assert err.mean() <= 1.5 * fp8_err.mean() and err.max() <= 3.0 * fp8_err.max()
    assert torch.equal(got[0, 0, :128], torch.zeros_like(got[0, 0, :128]))
