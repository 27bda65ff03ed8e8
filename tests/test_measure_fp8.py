"""The FP8 measurement script's CPU walk-through (toy sizes) and its per-group cost arithmetic."""

from __future__ import annotations

import json
import tomllib

from scripts.measure_fp8 import group_costs, main, steady_tokens, throughput_rows
from upscaler.models.fp8 import DIT_FP8_GROUPS


def test_steady_tokens_are_the_dit_tokens_of_a_steady_step() -> None:
    assert steady_tokens((3840, 2160), 128) == 65280  # 3840x2176 model, /16 per axis, 2 latent frames
    assert steady_tokens((1920, 1080), 128) == 17280


def test_group_costs_add_what_fp8_needs_to_feed_each_product() -> None:
    shape = {
        "q/k/v/o": {"bf16_linear_ms": 1.0, "fp8_product_ms": 0.5, "quantise_pass_ms": 0.2},
        "ffn up": {"bf16_linear_ms": 5.0, "fp8_product_ms": 3.0, "bf16_linear_gelu_epilogue_ms": 5.5},
        "ffn down": {"bf16_linear_ms": 5.0, "fp8_product_ms": 2.5, "gelu_quantise_pass_ms": 0.9, "bf16_gelu_ms": 0.6},
        "layer norm bf16": {"modulated": 0.3, "affine": 0.3},
        "layer norm fp8": {"modulated": 0.35, "affine": 0.32},
    }
    costs = group_costs(shape)
    assert set(costs) == set(DIT_FP8_GROUPS)
    assert costs["self_qkv"] == {"bf16_ms": 3.0, "fp8_ms": 1.55}
    assert costs["self_o"] == {"bf16_ms": 1.0, "fp8_ms": 0.7}
    assert costs["cross_q"] == {"bf16_ms": 1.0, "fp8_ms": 0.52}
    assert costs["ffn_up"] == {"bf16_ms": 5.5, "fp8_ms": 3.65}
    assert costs["ffn_down"] == {"bf16_ms": 5.0, "fp8_ms": 2.8}


def test_group_costs_with_fast_accum_take_the_fast_accum_products() -> None:
    shape = {
        "q/k/v/o": {"bf16_linear_ms": 1.0, "fp8_product_ms": 0.5, "fp8_product_fast_accum_ms": 0.4, "quantise_pass_ms": 0.2},
        "ffn up": {"bf16_linear_ms": 5.0, "fp8_product_ms": 3.0, "fp8_product_fast_accum_ms": 2.0},
        "ffn down": {"bf16_linear_ms": 5.0, "fp8_product_ms": 2.5, "fp8_product_fast_accum_ms": 2.0,
                     "gelu_quantise_pass_ms": 0.9, "bf16_gelu_ms": 0.6},
    }
    costs = group_costs(shape, fast_accum=True)
    assert costs["self_qkv"] == {"bf16_ms": 3.0, "fp8_ms": 1.2}
    assert costs["self_o"] == {"bf16_ms": 1.0, "fp8_ms": 0.6}
    assert costs["ffn_up"] == {"bf16_ms": 5.6, "fp8_ms": 2.6}
    assert costs["ffn_down"] == {"bf16_ms": 5.0, "fp8_ms": 2.3}
    assert group_costs(shape)["self_o"] == {"bf16_ms": 1.0, "fp8_ms": 0.7}


def test_measured_layers_are_the_groups_the_gemm_section_found_faster(tmp_path) -> None:
    assert main([str(tmp_path / "no-gemm"), "--smoke", "--sections", "error", "--fp8-layers", "measured"]) == 2
    assert main([str(tmp_path), "--smoke", "--sections", "gemm", "--fp8-layers", "measured", "--fast-accum"]) == 0
    result = json.loads((tmp_path / "fp8_measure.json").read_text())
    assert result["fp8_layers"] == result["gemm"]["fp8_faster_groups"]
    assert result["fp8_fast_accum"] is True
    assert main([str(tmp_path / "slow"), "--smoke", "--sections", "gemm", "--no-fast-accum"]) == 0
    assert json.loads((tmp_path / "slow" / "fp8_measure.json").read_text())["fp8_fast_accum"] is False
    assert main([str(tmp_path / "default"), "--smoke", "--sections", "gemm"]) == 0  # configs/upscaler.toml's
    assert json.loads((tmp_path / "default" / "fp8_measure.json").read_text())["fp8_fast_accum"] is True


def test_smoke_run_writes_every_figure(tmp_path, capsys) -> None:
    assert main([str(tmp_path), "--smoke", "--fp8-layers", "self_qkv,self_o,ffn_down,lq_conv2"]) == 0
    result = json.loads((tmp_path / "fp8_measure.json").read_text())
    assert result["gemm"]["scaled_mm"] is False and result["gemm"]["decided_at"] == "toy"
    toy = result["gemm"]["shapes"]["toy"]
    assert toy["q/k/v/o"]["bf16_linear_ms"] > 0 and toy["q/k/v/o"]["product_vs_emulated_rel_error"] == 0.0
    assert set(result["gemm"]["groups"]["toy"]) == set(DIT_FP8_GROUPS)
    fused = result["gemm"]["ffn_fused"]["toy"]  # emulated off the GPU, as the other groups' products
    assert fused["rowwise_ms"] > 0 and fused["fused_ms"] > 0 and 0 < fused["fused_vs_rowwise_rel_error"] < 0.1
    error = result["error"]
    assert set(error["per_layer_rel_error"]) == {"self_qkv", "self_o", "ffn_down"}
    assert all(0.0 < e["mean"] <= e["max"] < 0.1 for e in error["per_layer_rel_error"].values())
    assert len(error["per_layer_rel_error"]["self_qkv"]["per_block"]) == 2  # the small preset's blocks
    assert [s["step"] for s in error["latents"]] == [0, 1, 2]
    assert len(error["lq_features_rel_error"]) == 3 and all(0 < e < 0.1 for e in error["lq_features_rel_error"])
    assert all(20.0 < s["psnr_db"] < 100.0 and s["rel_error"] > 0 for s in error["latents"])
    assert error["output"]["frames"] == 29 and error["output"]["psnr_rgb_db"] > 20.0
    assert "e2e" not in result  # GPU only
    out = capsys.readouterr().out
    assert "LQ features rel error per call" in out
    assert "FFN in FP8: rowwise" in out and "FP8 faster:" in out
    assert "output PSNR (bf16 vs fp8, FP8 cache, fp8 attention off)" in out
    assert error["kv_cache"] == "fp8" and error["fp8_attention"] is False  # off the GPU: the dequantised cache


def test_fp8_bench_rows_become_throughput_entries() -> None:
    rows = [{"case": "tiny:SD24K:300", "precision": "bf16", "variant": "tiny", "out_size": [3840, 2160], "fps": 9.9,
             "peak_vram_gib": 44.1},
            {"case": "tiny:SD24K:300", "precision": "fp8", "variant": "tiny", "out_size": [3840, 2160], "fps": 12.6,
             "peak_vram_gib": 42.0},
            {"case": "tiny:SD2HD:300", "precision": "fp8", "error": "out of memory"}]
    assert "--precision fp8 --fp8-fast-accum " in throughput_rows(rows, "h200", fast_accum=True)
    assert "--precision fp8 --no-fp8-fast-accum " in throughput_rows(rows, "h200", fast_accum=False)
    entries = tomllib.loads(throughput_rows(rows, "h200"))["entry"]
    assert entries == [{"device": "h200", "variant": "tiny", "precision": "fp8", "width": 3840, "height": 2160,
                        "fps": 12.6, "peak_gib": 42.0}]
