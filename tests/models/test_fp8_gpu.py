"""GPU-only guards of the FP8 linears (skipped on CPU-only machines such as CI; ``pytest -q -m gpu``):
the fused quantising kernels equal the reference on the GPU, ``torch._scaled_mm`` runs where the GPU has
FP8 tensor cores (with block scales on sm_90: ``ffn_fused``), and an FP8 DiT streams within the error budget
of the bf16 one."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from kernels.fp8_ffn_up import up_gelu_quantise, up_gelu_quantise_torch
from kernels.fp8_quant import dequantise_blocks_torch, quantise_rows, quantise_rows_torch
from kernels.layer_norm import add_layer_norm
from upscaler.models.config import SparsityParams, load_preset
from upscaler.models.dit import WanDiT
from upscaler.models.fp8 import (FP8_LAYER_GROUPS, FP8BlockLinear, FP8Linear, QuantisedBlocks, QuantisedRows,
                                 block_scaled_mm_layout, convert_dit_linears, scaled_mm_supported)
from upscaler.settings import DEFAULT_FP8_LAYERS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
CFG = load_preset("small").dit


@pytest.mark.skipif(not FP8_GPU, reason="no e4m3 before compute capability 8.9")
def test_fused_quantisation_equals_the_reference_on_the_gpu() -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(1, 300, 1536, generator=g) * 3).to("cuda", torch.bfloat16)
    update = torch.randn(1, 300, 1536, generator=g).to("cuda", torch.bfloat16)
    scale, shift, gate = (torch.randn(1536, generator=g).to("cuda", torch.bfloat16) for _ in range(3))
    _, plain = add_layer_norm(x, scale, shift, 1e-6, update=update, gate=gate)
    _, (q, row_scale) = add_layer_norm(x, scale, shift, 1e-6, update=update, gate=gate, fp8=True)
    q_ref, scale_ref = quantise_rows_torch(plain)
    assert torch.equal(row_scale, scale_ref) and torch.equal(q.float(), q_ref.float())
    hidden = torch.randn(300, 8960, generator=g).to("cuda", torch.bfloat16)
    q, row_scale = quantise_rows(hidden, gelu=True)
    q_ref, scale_ref = quantise_rows_torch(hidden, gelu=True)  # the GELU's sigmoid differs from PyTorch's in ulps
    torch.testing.assert_close(row_scale, scale_ref, rtol=1e-5, atol=0)
    assert (q.float() != q_ref.float()).float().mean().item() < 0.01


@pytest.mark.skipif(not SM90, reason="cuBLAS's block scaling runs on sm_90")
@torch.no_grad()
def test_ffn_fused_kernel_and_block_scaled_product_equal_their_references() -> None:
    """At the real widths: the up projection's kernel gives the reference's block scales and values but for
    the FP8 tensor cores' accumulation (no fp32 promotion; its small differences move a value across an
    e4m3 rounding boundary now and then); cuBLAS's block-scaled product gives the emulated one."""
    layout = block_scaled_mm_layout(torch.device("cuda"))
    assert layout is not None
    g = torch.Generator(device="cpu").manual_seed(2)
    up, down = torch.nn.Linear(1536, 8960), torch.nn.Linear(8960, 1536)
    up, down = up.to("cuda", torch.bfloat16), down.to("cuda", torch.bfloat16)
    up8 = FP8Linear(up, use_scaled_mm=True)
    down_blocks = FP8BlockLinear(down, use_scaled_mm=True, layout=layout)
    x = QuantisedRows(*quantise_rows_torch(torch.randn(300, 1536, generator=g).to("cuda", torch.bfloat16)))
    args = (x.data, x.scale.reshape(-1), up8.weight, up8.weight_scale, up8.bias)
    (q, scale), (q_ref, scale_ref) = up_gelu_quantise(*args), up_gelu_quantise_torch(*args)
    assert scale.stride() == (1, 300)
    torch.testing.assert_close(scale, scale_ref, rtol=5e-3, atol=0)
    assert (q.float() != q_ref.float()).float().mean().item() < 0.05
    dequantised, reference = dequantise_blocks_torch(q, scale), dequantise_blocks_torch(q_ref, scale_ref)
    assert ((dequantised - reference).norm() / reference.norm()).item() < 2e-2
    blocks = QuantisedBlocks(q, scale)
    got = down_blocks(blocks)
    emulated = FP8BlockLinear(down, use_scaled_mm=False)(blocks)
    assert ((got.float() - emulated.float()).norm() / emulated.float().norm()).item() < 1e-2


@torch.no_grad()
@pytest.mark.parametrize("groups", [DEFAULT_FP8_LAYERS, FP8_LAYER_GROUPS], ids=["default", "with-ffn-fused"])
@pytest.mark.parametrize("fast_accum", [False, True], ids=["fp32-promotion", "fast-accum"])
def test_fp8_dit_uses_scaled_mm_and_stays_within_budget(caplog, fast_accum: bool, groups: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    dit = WanDiT(CFG).eval().to("cuda", torch.bfloat16)
    dit.prepare(torch.randn(1, CFG.text_len, CFG.text_dim))
    fp8 = copy.deepcopy(dit)
    with caplog.at_level(logging.INFO, logger="upscaler.models.fp8"):
        convert_dit_linears(fp8, groups, fast_accum=fast_accum)
    assert ("path=torch._scaled_mm" in caplog.text) == (FP8_GPU and scaled_mm_supported(torch.device("cuda")))
    sparsity = SparsityParams(sparse_ratio=0.1, kv_ratio=3, local_range=3)
    g = torch.Generator(device="cpu").manual_seed(1)
    caches = (dit.new_cache(), fp8.new_cache())
    for step in range(3):
        noise = torch.randn(1, 16, 6 if step == 0 else 2, 48, 48, generator=g).to("cuda", torch.bfloat16)
        want, got = (model.stream_step(noise, None, cache, step=step, sparsity=sparsity)
                     for model, cache in zip((dit, fp8), caches))
        pred_want, pred_got = (noise - want).float(), (noise - got).float()
        rel = ((pred_got - pred_want).norm() / pred_want.norm()).item()
        assert rel < 0.08, (step, rel)


@pytest.mark.skipif(not FP8_GPU, reason="no e4m3 before compute capability 8.9")
@torch.no_grad()
@pytest.mark.parametrize("with_context", [False, True])
def test_lq_fp8_conv_kernel_equals_the_emulated_conv(with_context: bool) -> None:
    """The LQ projection's second conv at the real channel counts on a small frame: the e4m3 stacking and the
    implicit-GEMM kernel give the emulated result up to the tensor cores' accumulation (no periodic fp32
    promotion over the 73,728-long reduction: 0.8% on an H200) and one bf16 rounding, and stay within FP8's
    error of the bf16 conv."""
    from upscaler.models.config import LQProjConfig
    from upscaler.models.lq_proj import CausalLQProj
    from upscaler.models.lq_proj_fp8 import FP8CausalConv

    torch.manual_seed(0)
    lq = CausalLQProj(LQProjConfig()).eval().to("cuda", torch.bfloat16)
    lq.norm1.gamma.copy_(1 + 0.3 * torch.randn_like(lq.norm1.gamma))
    kernel = FP8CausalConv(lq.conv2, lq.norm1.gamma, use_kernel=True)
    emulated = FP8CausalConv(lq.conv2, lq.norm1.gamma, use_kernel=False)
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (1, lq.conv2.in_channels, 2, 20, 36)

    def first_layer_output() -> torch.Tensor:  # what the second conv reads: silu(norm1(...)), within the bound
        return torch.nn.functional.silu(lq.norm1(torch.randn(shape, generator=g).to("cuda", torch.bfloat16) * 3))

    x = first_layer_output()
    context = first_layer_output() if with_context else None
    got, want, exact = kernel(x, context), emulated(x, context), lq.conv2(x, context)
    assert got.shape == want.shape == exact.shape and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    assert float((got.float() - want.float()).norm() / want.float().norm()) < 1.2e-2
    assert float((got.float() - exact.float()).norm() / exact.float().norm()) < 0.06
