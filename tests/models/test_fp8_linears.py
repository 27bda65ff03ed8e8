"""FP8 linears of the DiT (``precision = "fp8"``) on the CPU: the emulated ``torch._scaled_mm``, which
layers convert, and a streamed DiT that stays close to the full-precision one."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from kernels.fp8_quant import E4M3, quantise_blocks_torch, quantise_rows_torch, quantise_tiles_torch
from upscaler.models.config import SparsityParams, load_preset
from upscaler.models.dit import WanDiT
from upscaler.models.fp8 import (FP8_LAYER_GROUPS, BlockScaledLayout, FP8BlockLinear, FP8Linear, QuantisedBlocks,
                                 QuantisedRows, convert_dit_linears, emulated_block_scaled_mm, emulated_scaled_mm,
                                 feed_forward_fp8, stacked_linear)

CFG = load_preset("small").dit
SPARSE = SparsityParams(sparse_ratio=0.1, kv_ratio=3, local_range=3)


def _steps(model: WanDiT, steps: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cache, out = model.new_cache(), []
    for step in range(steps):
        f = 6 if step == 0 else 2
        noise = torch.randn(1, 16, f, 48, 48, generator=g)
        feature = torch.randn(1, f * 24 * 24, CFG.dim, generator=g) * 0.1
        out.append(model.stream_step(noise, [feature], cache, step=step, sparsity=SPARSE))
    return out


def test_emulated_product_is_the_dequantised_product() -> None:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(9, 64, generator=g), torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
    (qa, sa), (qw, sw) = quantise_rows_torch(x), quantise_rows_torch(w)
    got = emulated_scaled_mm(qa, sa, qw, sw.reshape(1, -1), b, torch.float32)
    want = (qa.float() * sa) @ (qw.float() * sw).t() + b
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and it is an FP8-accurate approximation of the exact product
    exact = x @ w.t() + b
    rel = ((got - exact).norm() / exact.norm()).item()
    assert 0.0 < rel < 0.06, rel


def test_fp8_linear_quantises_its_weight_once_and_takes_either_input() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    fp8 = FP8Linear(linear, use_scaled_mm=False)
    assert fp8.weight.dtype == E4M3 and fp8.weight.shape == (48, 64) and fp8.weight_scale.shape == (1, 48)
    x = torch.randn(2, 5, 64)
    plain = fp8(x)
    assert plain.shape == (2, 5, 48) and plain.dtype == torch.float32
    assert torch.equal(plain, fp8(QuantisedRows(*quantise_rows_torch(x))))
    rel = ((plain - linear(x)).norm() / linear(x).norm()).item()
    assert 0.0 < rel < 0.06, rel


def test_only_the_chosen_groups_convert_and_the_path_is_logged(dit, caplog) -> None:
    model = copy.deepcopy(dit)
    with caplog.at_level(logging.INFO, logger="upscaler.models.fp8"):
        assert convert_dit_linears(model, ["self_o", "ffn_down"]) == {"self_o", "ffn_down"}
    assert "path=emulated" in caplog.text and "linears=4" in caplog.text  # 2 blocks x 2 linears
    for block in model.blocks:
        assert isinstance(block.self_attn.o, FP8Linear) and isinstance(block.ffn[2], FP8Linear)
        assert not isinstance(block.self_attn.q, FP8Linear) and not isinstance(block.ffn[0], FP8Linear)
        assert not isinstance(block.cross_attn.k, FP8Linear)  # prompt K/V: once per run, model dtype
    with pytest.raises(ValueError, match="unknown FP8 layer groups"):
        convert_dit_linears(copy.deepcopy(dit), ["attention"])
    fast = copy.deepcopy(dit)
    convert_dit_linears(fast, ["ffn_up"], fast_accum=True)
    assert all(block.ffn[0].fast_accum and not block.ffn[0].use_scaled_mm for block in fast.blocks)


@torch.no_grad()
def test_q_k_v_become_one_product_equal_to_the_three(dit) -> None:
    """The stacked product's weight rows, their scales and its output slices are the separate layers'."""
    model = copy.deepcopy(dit)
    attn = model.blocks[0].self_attn
    separate = [FP8Linear(linear, use_scaled_mm=False) for linear in (attn.q, attn.k, attn.v)]
    convert_dit_linears(model, ["self_qkv"])
    for block in model.blocks:
        assert isinstance(block.self_attn.qkv, FP8Linear)
        assert block.self_attn.q is None and block.self_attn.k is None and block.self_attn.v is None
        assert block.self_attn.qkv.weight.shape == (3 * CFG.dim, CFG.dim)
    assert torch.equal(attn.qkv.weight.view(torch.uint8), torch.cat([s.weight for s in separate]).view(torch.uint8))
    assert torch.equal(attn.qkv.weight_scale, torch.cat([s.weight_scale for s in separate], dim=1))
    rows = QuantisedRows(*quantise_rows_torch(torch.randn(2, 7, CFG.dim, generator=torch.Generator().manual_seed(3))))
    for got, layer in zip(attn._project(rows), separate):
        assert got.shape == (2, 7, CFG.dim)
        torch.testing.assert_close(got, layer(rows), rtol=1e-6, atol=1e-6)


def test_stacked_linear_refuses_different_inputs_and_keeps_a_single_one() -> None:
    one = nn.Linear(8, 4)
    assert stacked_linear([one]) is one
    with pytest.raises(ValueError, match="input widths"):
        stacked_linear([one, nn.Linear(6, 4)])


@torch.no_grad()
@pytest.mark.parametrize("groups", [FP8_LAYER_GROUPS, ("self_qkv", "ffn_up")])
def test_fp8_dit_streams_close_to_the_full_precision_dit(dit, groups) -> None:
    want = _steps(dit)
    model = copy.deepcopy(dit)
    convert_dit_linears(model, groups)
    got = _steps(model)
    for g, w in zip(got, want):
        rel = ((g - w).norm() / w.norm()).item()
        assert 0.0 < rel < 0.05, (groups, rel)


def test_tile_quantisation_puts_each_tile_maximum_on_448() -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(256, 384, generator=g) * torch.logspace(-3, 1, 384)  # columns of very different magnitudes
    q, scale = quantise_tiles_torch(w)
    assert q.dtype == E4M3 and q.shape == w.shape and scale.shape == (2, 3)
    tiles = q.float().reshape(2, 128, 3, 128).abs().amax(dim=(1, 3))
    assert bool((tiles == 448.0).all())
    dequantised = q.float() * scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
    rel = ((dequantised - w).norm() / w.norm()).item()
    assert 0.0 < rel < 0.05, rel


def test_block_scaled_product_is_the_dequantised_product() -> None:
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(9, 256, generator=g), torch.randn(128, 256, generator=g), torch.randn(128, generator=g)
    (qa, sa), (qw, sw) = quantise_blocks_torch(x), quantise_tiles_torch(w)
    assert sa.shape == (9, 2) and sa.stride() == (1, 9)
    got = emulated_block_scaled_mm(qa, sa, qw, sw, b, torch.float32)
    a_full = torch.cat([qa[:, :128].float() * sa[:, :1], qa[:, 128:].float() * sa[:, 1:]], dim=1)
    w_full = torch.cat([qw[:, :128].float() * sw[0, 0], qw[:, 128:].float() * sw[0, 1]], dim=1)
    torch.testing.assert_close(got, a_full @ w_full.t() + b, rtol=1e-5, atol=1e-5)
    exact = x @ w.t() + b
    assert 0.0 < ((got - exact).norm() / exact.norm()).item() < 0.06


@torch.no_grad()
def test_ffn_fused_writes_the_hidden_in_blocks_and_stays_close_to_the_rowwise_ffn(dit, caplog) -> None:
    rowwise, fused = copy.deepcopy(dit), copy.deepcopy(dit)
    convert_dit_linears(rowwise, ["ffn_up", "ffn_down"])
    with caplog.at_level(logging.INFO, logger="upscaler.models.fp8"):
        assert convert_dit_linears(fused, ["ffn_up", "ffn_down", "ffn_fused"]) == {"ffn_up", "ffn_down", "ffn_fused"}
    assert "path=emulated" in caplog.text
    up, down = fused.blocks[0].ffn[0], fused.blocks[0].ffn[2]
    assert isinstance(up, FP8Linear) and isinstance(down, FP8BlockLinear)
    assert down.weight.dtype == E4M3 and down.weight_scale.shape == (CFG.dim // 128, CFG.ffn_dim // 128)
    x = QuantisedRows(*quantise_rows_torch(torch.randn(2, 7, CFG.dim, generator=torch.Generator().manual_seed(6))))
    hidden = up.gelu_blocks(x)
    assert isinstance(hidden, QuantisedBlocks) and hidden.data.shape == (2, 7, CFG.ffn_dim)
    assert hidden.scale.shape == (14, CFG.ffn_dim // 128) and hidden.scale.stride() == (1, 14)
    got = feed_forward_fp8(up, down, x)
    want = feed_forward_fp8(rowwise.blocks[0].ffn[0], rowwise.blocks[0].ffn[2], x)
    exact = dit.blocks[0].ffn(x.data.float() * x.scale)
    assert got.shape == want.shape == (2, 7, CFG.dim)
    rel_fused, rel_rowwise = (((y - exact).norm() / exact.norm()).item() for y in (got, want))
    assert 0.0 < rel_fused < 0.06 and rel_fused < 1.5 * rel_rowwise, (rel_fused, rel_rowwise)


def test_block_linear_stores_tile_scales_at_the_stride_pytorch_takes() -> None:
    """Some PyTorch releases take the 128x128 tile scales' rows packed, some padded to 16 bytes: both layouts
    hold the same scales and give the same product."""
    torch.manual_seed(7)
    linear = nn.Linear(384, 256)  # 3 tiles along K: a padded row holds 4
    packed, padded = (FP8BlockLinear(linear, use_scaled_mm=False, layout=BlockScaledLayout(m)) for m in (1, 4))
    assert packed.weight_scale.shape == (2, 3) and padded.weight_scale.shape == (2, 4)
    assert torch.equal(packed.tile_scales(), padded.tile_scales()) and padded.tile_scales().stride() == (4, 1)
    x = QuantisedBlocks(*quantise_blocks_torch(torch.randn(5, 384)))
    assert torch.equal(packed(x), padded(x))


def test_ffn_fused_needs_both_ffn_groups(dit) -> None:
    with pytest.raises(ValueError, match="'ffn_fused' fuses the FFN's two FP8 products"):
        convert_dit_linears(copy.deepcopy(dit), ["ffn_down", "ffn_fused"])
