"""WanDiT: official keys, streaming steps vs a straightforward reference-style computation,
ring-buffer slot-order invariance, RoPE precision, cache size accounting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import kernels
from upscaler.models.config import SparsityParams, load_preset
from upscaler.models.dit import WanDiT, lcsa_topk, rope_time_offset, sinusoidal_embedding
from upscaler.kv_cache_memory import ELEMENT_BYTES, kv_cache_bytes, kv_cache_gib_per_mpx
from upscaler.models.rope import Rope3D, apply_rope

CFG = load_preset("small").dit
HEIGHT, WIDTH = 384, 384  # 3x3 LCSA windows per time slice
SPARSE = SparsityParams(sparse_ratio=0.1, kv_ratio=3, local_range=3)  # small enough that the mask drops blocks


def _inputs(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        f = 6 if step == 0 else 2
        noise = torch.randn(1, 16, f, HEIGHT // 8, WIDTH // 8, generator=g)
        feature = torch.randn(1, f * (HEIGHT // 16) * (WIDTH // 16), CFG.dim, generator=g) * 0.1
        out.append((noise, [feature]))
    return out


# --- a direct transcription of the reference semantics: raster tokens, complex128 RoPE,
# --- explicit window partition, K/V cache as a list of time slices concatenated every step


def _rope_complex(x, grid, offset):
    d = CFG.head_dim
    parts = []
    for dim, n, off in ((d - 2 * (d // 3), grid[0], offset), (d // 3, grid[1], 0), (d // 3, grid[2], 0)):
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
        parts.append(torch.polar(torch.ones(n, dim // 2, dtype=torch.float64), torch.outer(torch.arange(off, off + n).double(), inv)))
    f, h, w = grid
    freqs = torch.cat([
        parts[0].view(f, 1, 1, -1).expand(f, h, w, -1),
        parts[1].view(1, h, 1, -1).expand(f, h, w, -1),
        parts[2].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().unflatten(-1, (CFG.num_heads, -1, 2)).contiguous())
    return torch.view_as_real(xc * freqs).flatten(2).to(x.dtype)


def _to_windows(x, grid):
    f, h, w = grid
    return rearrange(x, "b (nf wf nh wh nw ww) c -> b (nf nh nw wf wh ww) c", nf=f // 2, wf=2, nh=h // 8, wh=8, nw=w // 8, ww=8)


def _from_windows(x, grid):
    f, h, w = grid
    return rearrange(x, "b (nf nh nw wf wh ww) c -> b (nf wf nh wh nw ww) c", nf=f // 2, wf=2, nh=h // 8, wh=8, nw=w // 8, ww=8)


def _heads(x):
    return rearrange(x, "b s (n d) -> b n s d", n=CFG.num_heads)


def _manual_stream(model: WanDiT, context, inputs, sparsity):
    t = model.time_embedding(sinusoidal_embedding(CFG.freq_dim, torch.tensor([1000.0])))
    t_mod = model.time_projection(t).unflatten(1, (6, CFG.dim))
    ctx = model.text_embedding(context)
    caches: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    outputs = []
    for step, (noise, features) in enumerate(inputs):
        x = model.patch_embedding(noise)
        grid = tuple(x.shape[2:])
        x = rearrange(x, "b c f h w -> b (f h w) c") + features[0]
        windows_hw = (grid[1] // 8, grid[2] // 8)
        topk_ratio = sparsity.sparse_ratio * 768 * 1280 / (HEIGHT * WIDTH)  # float order as the reference
        topk = int((windows_hw[0] * windows_hw[1]) ** 2 * topk_ratio) - 1
        for block, cache in zip(model.blocks, caches):
            shift, scale, gate, shift2, scale2, gate2 = (block.modulation + t_mod).chunk(6, dim=1)
            sa = block.self_attn
            y = block.norm1(x) * (1 + scale) + shift
            offset = 0 if step == 0 else 4 + 2 * step
            q = _to_windows(_rope_complex(sa.norm_q(sa.q(y)), grid, offset), grid)
            k = _to_windows(_rope_complex(sa.norm_k(sa.k(y)), grid, offset), grid)
            v = _to_windows(sa.v(y), grid)
            slice_len = k.shape[1] // (grid[0] // 2)
            cache_k = torch.cat([c[0] for c in cache] + [k], dim=1)
            cache_v = torch.cat([c[1] for c in cache] + [v], dim=1)
            qh, kh, vh = _heads(q), _heads(cache_k), _heads(cache_v)
            mask = kernels.lcsa_block_mask(qh, kh, local_range=sparsity.local_range, topk=topk, grid=windows_hw)
            dense = mask.repeat_interleave(128, dim=2).repeat_interleave(64, dim=3)
            attn = torch.nan_to_num(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=dense))
            attn = _from_windows(rearrange(attn, "b n s d -> b s (n d)"), grid)
            slices = [(cache_k[:, i:i + slice_len], cache_v[:, i:i + slice_len]) for i in range(0, cache_k.shape[1], slice_len)]
            cache[:] = slices[1:] if len(slices) > int(sparsity.kv_ratio) else slices
            x = x + gate * sa.o(attn)
            ca = block.cross_attn
            cq = _heads(ca.norm_q(ca.q(block.norm3(x))))
            ck, cv = _heads(ca.norm_k(ca.k(ctx))), _heads(ca.v(ctx))
            x = x + ca.o(rearrange(F.scaled_dot_product_attention(cq, ck, cv), "b n s d -> b s (n d)"))
            x = x + gate2 * block.ffn(block.norm2(x) * (1 + scale2) + shift2)
        head_shift, head_scale = (model.head.modulation + t.unsqueeze(1)).chunk(2, dim=1)
        x = model.head.head(model.head.norm(x) * (1 + head_scale) + head_shift)
        pred = rearrange(x, "b (f h w) (x y z c) -> b c (f x) (h y) (w z)", f=grid[0], h=grid[1], w=grid[2], x=1, y=2, z=2)
        outputs.append(noise - pred)
    return outputs


def test_keys_are_the_official_dit_keys(dit):
    keys = set(dit.state_dict())
    expected = {"patch_embedding.weight", "patch_embedding.bias", "time_projection.1.weight", "time_projection.1.bias",
                "head.head.weight", "head.head.bias", "head.modulation"}
    for name in ("text_embedding", "time_embedding"):
        expected |= {f"{name}.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for n in range(CFG.num_layers):
        b = f"blocks.{n}"
        for attn in ("self_attn", "cross_attn"):
            expected |= {f"{b}.{attn}.{l}.{p}" for l in "qkvo" for p in ("weight", "bias")}
            expected |= {f"{b}.{attn}.norm_q.weight", f"{b}.{attn}.norm_k.weight"}
        expected |= {f"{b}.norm3.weight", f"{b}.norm3.bias", f"{b}.modulation"}
        expected |= {f"{b}.ffn.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert keys == expected
    assert dit.state_dict()["blocks.0.modulation"].shape == (1, 6, CFG.dim)
    assert dit.state_dict()["patch_embedding.weight"].shape == (CFG.dim, 16, 1, 2, 2)


@pytest.mark.parametrize("kv_ratio", [1, 4])
@torch.no_grad()
def test_streaming_steps_match_the_reference_semantics(dit, kv_ratio):
    torch.manual_seed(1)
    context = torch.randn(1, CFG.text_len, CFG.text_dim)
    dit.prepare(context)
    sparsity = SparsityParams(SPARSE.sparse_ratio, kv_ratio, SPARSE.local_range)
    inputs = _inputs(4)
    expected = _manual_stream(dit, context, inputs, sparsity)
    cache = dit.new_cache()
    for step, ((noise, features), want) in enumerate(zip(inputs, expected)):
        got = dit.stream_step(noise, features, cache, step=step, sparsity=sparsity)
        assert got.shape == noise.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_cached_slice_order_does_not_change_the_result(dit):
    inputs = _inputs(5, seed=3)
    a, b = dit.new_cache(), dit.new_cache()
    for step, (noise, features) in enumerate(inputs[:4]):
        dit.stream_step(noise, features, a, step=step, sparsity=SPARSE)
        dit.stream_step(noise, features, b, step=step, sparsity=SPARSE)
    assert b.filled == b.slots == 4
    others = [s for s in range(b.slots) if s != b.next_slot]  # the next write replaces the oldest slot
    for buffers, n in ((b.keys, b.slice_len), (b.values, b.slice_len), (b.pooled_keys, b.slice_len // 64)):
        for buf in buffers:
            first, second = buf[:, :, others[0] * n:(others[0] + 1) * n].clone(), buf[:, :, others[2] * n:(others[2] + 1) * n].clone()
            buf[:, :, others[0] * n:(others[0] + 1) * n] = second
            buf[:, :, others[2] * n:(others[2] + 1) * n] = first
    noise, features = inputs[4]
    want = dit.stream_step(noise, features, a, step=4, sparsity=SPARSE)
    got = dit.stream_step(noise, features, b, step=4, sparsity=SPARSE)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_step_and_chunk_checks(dit):
    (noise0, f0), (noise1, f1) = _inputs(2)
    cache = dit.new_cache()
    with pytest.raises(ValueError, match="step=1"):
        dit.stream_step(noise1, f1, cache, step=1, sparsity=SPARSE)
    with pytest.raises(ValueError, match="first streaming step takes 3"):
        dit.stream_step(noise1, f1, dit.new_cache(), step=0, sparsity=SPARSE)
    with pytest.raises(ValueError, match="multiple of 128"):
        dit.stream_step(noise0[..., :40], None, dit.new_cache(), step=0, sparsity=SPARSE)
    with pytest.raises(RuntimeError, match="prepare"):
        WanDiT(CFG).stream_step(noise0, f0, dit.new_cache(), step=0, sparsity=SPARSE)


@torch.no_grad()
def test_cache_size_is_known_up_front(dit):
    (noise, features), = _inputs(1)
    cache = dit.new_cache()
    dit.stream_step(noise, features, cache, step=0, sparsity=SPARSE)
    latent_hw = (HEIGHT // 8, WIDTH // 8)
    assert cache.nbytes() == kv_cache_bytes(CFG, latent_hw, SPARSE.kv_ratio, torch.float32.itemsize)
    fp8 = dit.new_cache(torch.float8_e4m3fn)
    dit.stream_step(noise, features, fp8, step=0, sparsity=SPARSE)
    assert fp8.nbytes() == kv_cache_bytes(CFG, latent_hw, SPARSE.kv_ratio, ELEMENT_BYTES["fp8"])
    real = load_preset("wan2.1-1.3b").dit
    # 4K output (3840x2176 model size), kv_ratio 3, bf16: 4 slices of 2 x 272 x 480 / 4 tokens
    bf16 = kv_cache_bytes(real, (272, 480), 3, ELEMENT_BYTES["model"])
    assert bf16 == 2 * 30 * 1536 * 4 * 2 * 136 * 240 * 2
    # what the tile plan prices per megapixel of the model frame: 44.8 GiB bf16, 22.4 GiB FP8 at 4K
    per_mpx = {dtype: kv_cache_gib_per_mpx(real, 3, dtype) * 3840 * 2176 / 1e6 for dtype in ("model", "fp8", "fp8-qk")}
    assert per_mpx == {"model": pytest.approx(bf16 / 2**30), "fp8": pytest.approx(bf16 / 2**31),
                       "fp8-qk": pytest.approx(bf16 / 2**31)}
    with pytest.raises(ValueError, match="unknown K/V cache dtype"):
        kv_cache_gib_per_mpx(real, 3, "fp16")


def test_fp32_rope_matches_complex128():
    rope = Rope3D(CFG.head_dim)
    grid = (2, 16, 16)
    positions = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).reshape(-1, 3)
    cos, sin = rope.tables(positions, time_offset=70)
    x = torch.randn(1, positions.shape[0], CFG.num_heads, CFG.head_dim)
    ours = apply_rope(x, cos, sin).flatten(2)
    reference = _rope_complex(x.flatten(2).double(), grid, 70)
    assert (ours.double() - reference).abs().max().item() < 1e-5


def test_schedule_constants():
    assert [rope_time_offset(s) for s in range(4)] == [0, 6, 8, 10]
    # 768x1280 output, sparse_ratio 2: 60 windows per slice -> int(3600 * 2) - 1
    assert lcsa_topk(SparsityParams(), 6 * 10, 768 * 1280) == 7199
    assert math.isclose(SparsityParams().sparse_ratio, 2.0)


@torch.no_grad()
def test_fp8_cache_halves_memory_and_stays_close(dit):
    """FP8 (e4m3, scaled per slice and head) K/V storage: a quarter of fp32 / half of bf16 bytes,
    and the streamed latents stay close to the full-precision cache over several steps."""
    full, fp8 = dit.new_cache(), dit.new_cache(torch.float8_e4m3fn)
    worst = 0.0
    for step, (noise, features) in enumerate(_inputs(5)):
        want = dit.stream_step(noise, features, full, step=step, sparsity=SPARSE)
        got = dit.stream_step(noise, features, fp8, step=step, sparsity=SPARSE)
        worst = max(worst, ((got - want).norm() / want.norm()).item())
    assert fp8.nbytes() * 4 == full.nbytes()
    assert 0.0 < worst < 0.05, worst


@torch.no_grad()
def test_fp8_keys_reach_attention_as_stored(dit, monkeypatch):
    """``fp8_keys``: attention receives the cache's e4m3 keys with their per-slice scales (values
    dequantised); off CUDA the backend dequantises them, so the steps equal the plain FP8 cache's."""
    import kernels

    seen = []
    real = kernels.sparse_attention

    def spy(q, k, v, mask, **kwargs):
        seen.append((k.dtype, v.dtype, kwargs.get("key_scales")))
        return real(q, k, v, mask, **kwargs)

    monkeypatch.setattr(kernels, "sparse_attention", spy)
    plain, raw = dit.new_cache(torch.float8_e4m3fn), dit.new_cache(torch.float8_e4m3fn, fp8_keys=True)
    for step, (noise, features) in enumerate(_inputs(4)):
        want = dit.stream_step(noise, features, plain, step=step, sparsity=SPARSE)
        seen.clear()
        got = dit.stream_step(noise, features, raw, step=step, sparsity=SPARSE)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        k_dtype, v_dtype, scales = seen[0]
        assert (k_dtype, v_dtype) == (torch.float8_e4m3fn, want.dtype) and scales.slice_len == raw.slice_len
        assert scales.scales.shape == (raw.filled, dit.cfg.num_heads)


@torch.no_grad()
def test_fp8_attention_reads_keys_and_transposed_values_as_stored(dit, monkeypatch):
    """``fp8_attention``: the cache stores the values transposed, ``(B, H, D, slots * S)``, and attention
    receives keys and values as stored with their per-slice scales over the filled slots (the ring
    wraps within these steps); off CUDA they are dequantised, so the steps equal the plain FP8 cache's
    bit for bit."""
    import kernels

    seen = []
    real = kernels.sparse_attention_fp8

    def spy(q, kv, mask, **kwargs):
        seen.append(kv)
        return real(q, kv, mask, **kwargs)

    monkeypatch.setattr(kernels, "sparse_attention_fp8", spy)
    plain = dit.new_cache(torch.float8_e4m3fn)
    raw = dit.new_cache(torch.float8_e4m3fn, fp8_attention=True)
    for step, (noise, features) in enumerate(_inputs(6)):
        want = dit.stream_step(noise, features, plain, step=step, sparsity=SPARSE)
        seen.clear()
        got = dit.stream_step(noise, features, raw, step=step, sparsity=SPARSE)
        assert torch.equal(got, want)
        kv = seen[0]
        b, h, length, d = kv.keys.shape
        assert kv.values_t.shape == (b, h, d, length) and kv.values_t.stride()[-1] == 1
        assert length == raw.filled * raw.slice_len and kv.key_scales.shape == (raw.filled, h)
        assert torch.equal(kv.values_t.transpose(2, 3).view(torch.uint8),
                           plain.values[0][:, :, :length].view(torch.uint8))
    assert raw.nbytes() == plain.nbytes() and len(seen) == dit.cfg.num_layers


def test_fp8_attention_needs_the_fp8_cache(dit):
    (noise, features), = _inputs(1)
    with pytest.raises(ValueError, match="fp8_attention needs the FP8 cache"):
        dit.stream_step(noise, features, dit.new_cache(fp8_attention=True), step=0, sparsity=SPARSE)


def test_compiled_elementwise_chains_match_eager():
    """The fusable functions give the same values compiled as eager (inductor on the CPU here)."""
    from upscaler.models import fusion
    from upscaler.models.dit import _gated_add, _norm_modulate

    g = torch.Generator().manual_seed(0)
    x, scale, shift = torch.randn(1, 64, 32, generator=g), torch.randn(1, 1, 32, generator=g), torch.randn(1, 1, 32, generator=g)
    eager = _gated_add(x, scale, _norm_modulate(x, scale, shift, 1e-6))
    fusion.set_enabled(True)
    try:
        compiled = _gated_add(x, scale, _norm_modulate(x, scale, shift, 1e-6))
    finally:
        fusion.set_enabled(False)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
