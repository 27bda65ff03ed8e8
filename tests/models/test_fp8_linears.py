"""FP8 linears of the DiT (``precision = "fp8"``) on the CPU: the emulated ``torch._scaled_mm``, which
layers convert, and a streamed DiT that stays close to the full-precision one."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from kernels.fp8_quant import E4M3, quantise_rows_torch
from upscaler.models.config import SparsityParams, load_preset
from upscaler.models.dit import WanDiT
from upscaler.models.fp8 import (FP8_LAYER_GROUPS, FP8Linear, QuantisedRows, convert_dit_linears, emulated_scaled_mm,
                                 stacked_linear)

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
