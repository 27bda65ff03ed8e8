"""``precision = "bf16" | "fp8"`` as configuration: upscaler settings, the miner's [upscaler] table, the
CLIs, and the throughput rows the planner reads for each precision."""

from __future__ import annotations

import math

import pytest

from miner.config import load_miner_config
from scripts.bench import build_parser as bench_parser
from upscaler.cli import build_parser as upscale_parser
from upscaler.planner import Measurement, ThroughputTable, WorkerCapacity, _precision_rows, max_content_length
from upscaler.settings import DEFAULT_FP8_LAYERS, load_settings


def test_settings_default_to_bf16_and_validate_fp8_options() -> None:
    settings = load_settings(weights="random-small", device="cpu")
    assert settings.precision == "bf16" and settings.fp8_layers == DEFAULT_FP8_LAYERS and settings.fp8_fast_accum
    assert load_settings(weights="random-small", device="cpu", precision="fp8").precision == "fp8"
    with pytest.raises(ValueError, match="precision must be one of"):
        load_settings(weights="random-small", device="cpu", precision="fp4")
    with pytest.raises(ValueError, match="fp8_fast_accum must be true or false, got 'yes'"):
        load_settings(weights="random-small", device="cpu", fp8_fast_accum="yes")
    with pytest.raises(ValueError, match="fp8_attention must be true or false, got 1"):
        load_settings(weights="random-small", device="cpu", fp8_attention=1)
    with pytest.raises(ValueError, match="fp8_layers: unknown"):
        load_settings(weights="random-small", device="cpu", fp8_layers=("self_qkv", "everything"))
    with pytest.raises(ValueError, match="'ffn_fused' fuses the FFN's two FP8 products: add \"ffn_up\""):
        load_settings(weights="random-small", device="cpu", fp8_layers=("ffn_down", "ffn_fused"))
    assert "ffn_fused" in load_settings(weights="random-small", device="cpu",
                                        fp8_layers=("ffn_up", "ffn_down", "ffn_fused")).fp8_layers
    for cap in (-1.0, math.nan, math.inf):  # the upscaler's own CLIs and TOML, not only the miner's table
        with pytest.raises(ValueError, match="max_vram_gib must be a finite number >= 0"):
            load_settings(weights="random-small", device="cpu", max_vram_gib=cap)


def test_miner_config_carries_and_checks_the_precision() -> None:
    assert load_miner_config(environ={}).get("upscaler.precision") == "bf16"
    assert load_miner_config(overrides={"upscaler": {"precision": "fp8"}}, environ={}).get("upscaler.precision") == "fp8"
    with pytest.raises(ValueError, match="upscaler.precision must be one of"):
        load_miner_config(overrides={"upscaler": {"precision": "int8"}}, environ={})


def test_clis_take_the_precision() -> None:
    args = upscale_parser().parse_args(["in.mp4", "out.mp4", "--scale", "2", "--precision", "fp8"])
    assert args.precision == "fp8"
    assert upscale_parser().parse_args(["in.mp4", "out.mp4", "--scale", "2"]).precision is None  # the TOML's
    assert bench_parser().parse_args(["--precision", "bf16", "--precision", "fp8"]).precisions == ["bf16", "fp8"]
    with pytest.raises(SystemExit):
        bench_parser().parse_args(["--precision", "fp16"])
    fast_accum = {tuple(argv): bench_parser().parse_args(argv).fp8_fast_accum
                  for argv in ([], ["--fp8-fast-accum"], ["--no-fp8-fast-accum"])}
    assert fast_accum == {(): None, ("--fp8-fast-accum",): True, ("--no-fp8-fast-accum",): False}  # None: the TOML's
    attention = {tuple(argv): bench_parser().parse_args(argv).fp8_attention
                 for argv in ([], ["--fp8-attention"], ["--no-fp8-attention"])}
    assert attention == {(): None, ("--fp8-attention",): True, ("--no-fp8-attention",): False}


def test_planner_reads_the_precisions_rows_and_falls_back_to_bf16() -> None:
    rows = [Measurement("h200", "tiny", 3840, 2160, 9.9, 44.1), Measurement("h200", "tiny", 3840, 2160, 13.0, 40.0, "fp8"),
            Measurement("h200", "full", 1920, 1080, 7.1, 29.4)]
    bf16 = _precision_rows(rows, "bf16")
    fp8 = _precision_rows(rows, "fp8")
    assert [r.fps for r in bf16] == [9.9, 7.1]
    assert [r.fps for r in fp8] == [13.0, 7.1]  # full has no fp8 rows: its bf16 rows stand
    table = ThroughputTable.load("throughput", "fp8")
    plain = ThroughputTable.load("throughput")
    assert all(e.precision == "bf16" for e in plain.entries)
    assert table.frames_per_second("cpu", "tiny", 320, 180) == 3.5  # the fp8 row
    assert plain.frames_per_second("cpu", "tiny", 320, 180) == 4.0
    # LengthCheck reads the same table: a 4K answer with the precision's rows (bf16 rows where fp8 has none)
    assert max_content_length(3840, 2160, [WorkerCapacity("h200", table)]) == \
        max_content_length(3840, 2160, [WorkerCapacity("h200", plain)])


def test_precision_rows_and_tiled_rows_load_together() -> None:
    """The fp8 table keeps the [[tiled]] rows, and a worker gets both the precision and the memory cap."""
    fp8, bf16 = ThroughputTable.load("throughput", "fp8"), ThroughputTable.load("throughput")
    assert fp8.tiled_rows == bf16.tiled_rows and {r.device for r in fp8.tiled_rows} == {"h100"}
    overrides = load_miner_config(overrides={"upscaler": {"precision": "fp8", "max_vram_gib": 22.0}},
                                  environ={}).upscaler_overrides
    assert (overrides["precision"], overrides["max_vram_gib"]) == ("fp8", 22.0)
    settings = load_settings(weights="random-small", device="cpu",
                             **{key: overrides[key] for key in ("precision", "max_vram_gib")})
    assert (settings.precision, settings.max_vram_gib) == ("fp8", 22.0)


def test_miner_config_sets_the_fp8_layers_and_fast_accumulation() -> None:
    """[upscaler] fp8_layers / fp8_fast_accum / fp8_attention reach the workers' settings, agree with
    configs/upscaler.toml by default, and a bad value is refused at load with the key's name."""
    defaults = load_miner_config(environ={}).upscaler_overrides
    upscaler_toml = load_settings(weights="random-small", device="cpu")
    assert tuple(defaults["fp8_layers"]) == upscaler_toml.fp8_layers
    assert defaults["fp8_fast_accum"] == upscaler_toml.fp8_fast_accum
    assert defaults["fp8_attention"] == upscaler_toml.fp8_attention is True
    keys = ("fp8_layers", "fp8_fast_accum", "fp8_attention")
    overrides = load_miner_config(environ={"FLASHVSR_MINER_UPSCALER_FP8_LAYERS": "self_qkv, ffn_up",
                                           "FLASHVSR_MINER_UPSCALER_FP8_FAST_ACCUM": "false",
                                           "FLASHVSR_MINER_UPSCALER_FP8_ATTENTION": "false"}).upscaler_overrides
    settings = load_settings(weights="random-small", device="cpu", precision="fp8",
                             **{key: overrides[key] for key in keys})
    assert (settings.fp8_layers, settings.fp8_fast_accum, settings.fp8_attention) == (("self_qkv", "ffn_up"), False, False)
    with pytest.raises(ValueError, match=r"upscaler\.fp8_layers: unknown \['ffn'\]"):
        load_miner_config(overrides={"upscaler": {"fp8_layers": ["ffn"]}}, environ={})


def test_fp8_attention_says_why_it_is_off_where_its_kernel_cannot_run(caplog) -> None:
    """Off sm_90 (here the CPU) precision = "fp8" keeps attention over the dequantised FP8 cache, and the
    load log says so and why; without the FP8 cache it names the setting to change."""
    import logging

    import torch

    import kernels
    from upscaler.api import Upscaler

    assert not kernels.fp8_attention_available(torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="upscaler.api"):
        upscaler = Upscaler.load(load_settings(weights="random-small", device="cpu", precision="fp8",
                                               kv_cache_dtype="fp8"))
    assert not upscaler.fp8_attention_active
    assert "fp8 attention: off on cpu: its kernel needs an sm_90 GPU" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="upscaler.api"):
        Upscaler.load(load_settings(weights="random-small", device="cpu", precision="fp8", kv_cache_dtype="model"))
    assert 'fp8 attention: off: kv_cache_dtype=model (it reads the FP8 cache: set kv_cache_dtype = "fp8")' in caplog.text
