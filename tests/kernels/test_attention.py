"""Block-sparse attention: Triton kernel (CPU interpreter), flex and SDPA paths vs a float64 reference."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.flex import sparse_attention_flex
from kernels.reference import SliceScales, dequantize_slices, quantize_slices, sparse_attention_sdpa
from kernels.triton_sparse import compact_block_lists, sparse_attention_triton
from tests.kernels.helpers import dense_block_sparse_attention

TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3}


def _qkv(n_q: int, n_k: int, d: int, dtype: torch.dtype, *, seed: int, heads: int = 2):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n_q * 128, d, generator=gen).to(dtype)
    k = torch.randn(1, heads, n_k * 64, d, generator=gen).to(dtype)
    v = torch.randn(1, heads, n_k * 64, d, generator=gen).to(dtype)
    return q, k, v


def _masks(kind: str, heads: int, n_q: int, n_k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(1, heads, n_q, n_k, generator=gen) < 0.35
    if kind == "empty_rows":
        mask[:, 0, 0] = False
        mask[:, -1, -1] = False
    elif kind == "full_rows":
        mask[:, :, 1] = True
    elif kind == "single":
        mask[:] = False
        cols = torch.randint(0, n_k, (heads, n_q), generator=gen)
        mask[0, torch.arange(heads)[:, None], torch.arange(n_q)[None, :], cols] = True
    return mask


CASES = [
    # (mask kind, n_q blocks, n_k blocks (several key time slices), D, dtype, kernel config)
    ("random", 2, 8, 64, torch.float32, {"BLOCK_M": 64, "BLOCK_N": 64}),
    ("empty_rows", 2, 8, 128, torch.float32, {"BLOCK_M": 128, "BLOCK_N": 128}),
    ("full_rows", 3, 6, 64, torch.float16, {"BLOCK_M": 64, "BLOCK_N": 128}),
    ("single", 2, 12, 128, torch.float16, {"BLOCK_M": 128, "BLOCK_N": 64}),
    ("empty_rows", 2, 7, 128, torch.float16, {"BLOCK_M": 64, "BLOCK_N": 128}),
]


@pytest.mark.parametrize(("kind", "n_q", "n_k", "d", "dtype", "config"), CASES)
def test_triton_kernel_matches_float64_reference(kind, n_q, n_k, d, dtype, config):
    q, k, v = _qkv(n_q, n_k, d, dtype, seed=n_k + d)
    mask = _masks(kind, 2, n_q, n_k, seed=n_q)
    out = sparse_attention_triton(q, k, v, mask, config=config)
    expected = dense_block_sparse_attention(q, k, v, mask)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[dtype], rtol=0)
    empty = ~mask.any(-1).repeat_interleave(128, dim=2)
    assert torch.all(out[empty] == 0)


def test_triton_kernel_custom_scale_and_strided_inputs():
    """q/k/v as (B, L, H, D) memory viewed as (B, H, L, D), the layout the DiT passes."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 256, 2, 64, generator=gen).transpose(1, 2)
    k = torch.randn(1, 384, 2, 64, generator=gen).transpose(1, 2)
    v = torch.randn(1, 384, 2, 64, generator=gen).transpose(1, 2)
    mask = _masks("random", 2, 2, 6, seed=1)
    out = sparse_attention_triton(q, k, v, mask, scale=0.3)
    torch.testing.assert_close(out.double(), dense_block_sparse_attention(q, k, v, mask, scale=0.3), atol=2e-5, rtol=0)


@pytest.mark.parametrize(("schedule", "order"), [("locality", [0, 2, 3, 1]), ("lpt", [2, 0, 3, 1])])
def test_compact_block_lists_and_schedules(schedule, order):
    mask = torch.tensor([[[[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]]]], dtype=torch.bool)
    idx, cnt, got_order = compact_block_lists(mask, schedule)
    assert cnt.tolist() == [2, 0, 5, 1]
    assert got_order.tolist() == order
    assert idx[0, :2].tolist() == [0, 2]
    assert idx[2].tolist() == [0, 1, 2, 3, 4]
    assert idx[3, :1].tolist() == [3]


def test_triton_kernel_lpt_schedule():
    q, k, v = _qkv(3, 8, 64, torch.float32, seed=11)
    mask = _masks("empty_rows", 2, 3, 8, seed=12)
    config = {"BLOCK_M": 128, "BLOCK_N": 128}
    out = sparse_attention_triton(q, k, v, mask, config=config, schedule="lpt")
    torch.testing.assert_close(out.double(), dense_block_sparse_attention(q, k, v, mask), atol=2e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("path", [sparse_attention_sdpa, sparse_attention_flex], ids=["sdpa", "flex"])
def test_pytorch_paths_match_float64_reference(path):
    q, k, v = _qkv(2, 8, 32, torch.float32, seed=3)
    mask = _masks("empty_rows", 2, 2, 8, seed=4)
    out = path(q, k, v, mask)
    torch.testing.assert_close(out.double(), dense_block_sparse_attention(q, k, v, mask), atol=2e-5, rtol=0)
    assert torch.all(out[:, 0, :128] == 0)


def test_shape_errors_are_reported():
    q, k, v = _qkv(2, 4, 64, torch.float32, seed=5)
    with pytest.raises(ValueError, match="block_mask"):
        sparse_attention_triton(q, k, v, torch.ones(1, 2, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="head dim"):
        q2, k2, v2 = _qkv(2, 4, 32, torch.float32, seed=5)
        sparse_attention_triton(q2, k2, v2, torch.ones(1, 2, 2, 4, dtype=torch.bool))


TMA_CASES = [
    # (mask kind, n_q, n_k, D, dtype, BLOCK_M)
    ("random", 2, 8, 64, torch.float32, 64),
    ("empty_rows", 2, 7, 128, torch.float16, 128),
    ("full_rows", 3, 6, 64, torch.float16, 64),
    ("single", 2, 5, 128, torch.float32, 128),
]


@pytest.mark.parametrize(("kind", "n_q", "n_k", "d", "dtype", "block_m"), TMA_CASES)
def test_triton_kernel_tma_loads_match_float64_reference(kind, n_q, n_k, d, dtype, block_m):
    """The tensor-descriptor (TMA) load path, with q in the DiT's (B, L, H, D) memory layout."""
    gen = torch.Generator().manual_seed(n_k)
    q = torch.randn(1, n_q * 128, 2, d, generator=gen).to(dtype).transpose(1, 2)
    _, k, v = _qkv(n_q, n_k, d, dtype, seed=n_k + d)
    mask = _masks(kind, 2, n_q, n_k, seed=n_q)
    out = sparse_attention_triton(q, k, v, mask, use_tma=True, config={"BLOCK_M": block_m, "BLOCK_N": 64})
    assert out.stride() == q.stride()  # written in q's layout: no transpose before the output projection
    torch.testing.assert_close(out.double(), dense_block_sparse_attention(q, k, v, mask), atol=TOLERANCE[dtype], rtol=0)


FP8_CASES = [
    # (mask kind, n_q, n_k, slice_len, D, q dtype, use_tma, config)
    ("empty_rows", 2, 8, 128, 64, torch.float16, False, {"BLOCK_M": 64, "BLOCK_N": 64}),
    ("full_rows", 2, 6, 192, 128, torch.float16, False, {"BLOCK_M": 128, "BLOCK_N": 128}),
    ("random", 2, 8, 256, 64, torch.float16, True, {"BLOCK_M": 128, "BLOCK_N": 64}),
    ("single", 2, 6, 128, 128, torch.float32, True, {"BLOCK_M": 64, "BLOCK_N": 64}),
]


def _fp8_exact_queries(n_q: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Queries whose per-row e4m3 quantisation (scale = row absmax / 448) is exact: each row is a
    power-of-two multiple of e4m3 values with absmax 448. (Triton 3.6's interpreter rounds to e4m3 wrongly
    where rounding carries into the exponent, so rounding itself is checked on the GPU only.)"""
    gen = torch.Generator().manual_seed(seed)
    grid = (torch.randn(1, 2, n_q * 128, d, generator=gen) * 60).to(torch.float8_e4m3fn).float()
    grid[..., 0] = 448.0
    powers = 2.0 ** torch.randint(-9, -5, (1, 2, n_q * 128, 1), generator=gen).float()
    return (grid * powers).to(dtype)


@pytest.mark.parametrize(("kind", "n_q", "n_k", "slice_len", "d", "dtype", "use_tma", "config"), FP8_CASES)
def test_triton_kernel_fp8_keys(kind, n_q, n_k, slice_len, d, dtype, use_tma, config):
    """FP8 keys with per-(slice, head) scales: the kernel quantises q per row and multiplies in FP8; equal
    to float64 attention over the dequantised keys (q chosen exactly representable after quantisation)."""
    _, k, v = _qkv(n_q, n_k, d, dtype, seed=7 * n_k + d)
    q = _fp8_exact_queries(n_q, d, dtype, seed=n_k)
    k8, k_scale = quantize_slices(k, slice_len)
    mask = _masks(kind, 2, n_q, n_k, seed=n_q + 1)
    out = sparse_attention_triton(q, k8, v, mask, key_scales=SliceScales(k_scale, slice_len), use_tma=use_tma,
                                  config=config)
    k_deq = dequantize_slices(k8, k_scale, slice_len, torch.float64)
    expected = dense_block_sparse_attention(q, k_deq, v, mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[dtype], rtol=0)
    empty = ~mask.any(-1).repeat_interleave(128, dim=2)
    assert torch.all(out[empty] == 0)


def test_fp8_key_fallback_dequantises_and_bad_scales_are_reported():
    q, k, v = _qkv(2, 4, 64, torch.float32, seed=21)
    k8, k_scale = quantize_slices(k, 128)
    mask = _masks("random", 2, 2, 4, seed=22)
    expected = dense_block_sparse_attention(q, dequantize_slices(k8, k_scale, 128, torch.float64), v, mask)
    out = kernels.sparse_attention(q, k8, v, mask, key_scales=SliceScales(k_scale, 128))  # CPU: the SDPA path
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="need key_scales"):
        sparse_attention_triton(q, k8, v, mask)
    with pytest.raises(ValueError, match="slice_len"):
        sparse_attention_triton(q, k8, v, mask, key_scales=SliceScales(k_scale, 96))
    with pytest.raises(ValueError, match="key_scales.scales"):
        sparse_attention_triton(q, k8, v, mask, key_scales=SliceScales(k_scale[:1], 128))
    with pytest.raises(ValueError, match="not FP8"):
        sparse_attention_triton(q, k, v, mask, key_scales=SliceScales(k_scale, 128))


def test_fp8_keys_values_validate_and_dequantise_like_the_cache():
    """:class:`FP8KeysValues` refuses what the FP8 kernel cannot read, and its dequantised keys and values
    are those of :func:`dequantize_slices` over the untransposed values, element for element."""
    from kernels.reference import FP8KeysValues, dequantize_slices, quantize_slices

    g = torch.Generator().manual_seed(0)
    slice_len = 128
    (k8, ks), (v8, vs) = (quantize_slices(torch.randn(1, 2, 3 * slice_len, 64, generator=g) * s, slice_len)
                          for s in (1.0, 4.0))
    vt8 = v8.transpose(2, 3).contiguous()
    kv = FP8KeysValues(k8, vt8, ks, vs, slice_len)
    keys, values = kv.dequantized(torch.float32)
    assert torch.equal(keys, dequantize_slices(k8, ks, slice_len, torch.float32))
    assert torch.equal(values, dequantize_slices(v8, vs, slice_len, torch.float32)) and values.is_contiguous()
    with pytest.raises(ValueError, match="must be the keys'"):
        FP8KeysValues(k8, v8, ks, vs, slice_len)
    with pytest.raises(ValueError, match="must be torch.float8_e4m3fn"):
        FP8KeysValues(k8.float(), vt8, ks, vs, slice_len)
    with pytest.raises(ValueError, match="slice_len 96 must be a multiple of 64"):
        FP8KeysValues(k8, vt8, ks, vs, 96)
    with pytest.raises(ValueError, match=r"value_scales must be contiguous float32 \(>= 3, 2\)"):
        FP8KeysValues(k8, vt8, ks, vs[:2], slice_len)
