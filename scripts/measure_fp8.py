"""FP8 compute mode against bf16, in one process: the measurements that decide which DiT linears go FP8.

    python -m scripts.measure_fp8 runs/fp8            # on the GPU (about 6-7 minutes on an H100/H200)
    python -m scripts.measure_fp8 runs/fp8 --smoke    # the same steps at toy sizes, on the CPU (tests)

Sections, in this order, each written to ``OUT/fp8_measure.json`` as soon as it ends (a run cut short
keeps what finished):

1. ``gemm``: per DiT linear shape at the token counts of a steady 1080p and 4K step, bf16 ``F.linear``
   against ``torch._scaled_mm`` with rowwise scales (and with ``use_fast_accum``), the stand-alone
   quantising pass, the GELU variants, and the layer norm's bf16 and FP8 variants; from these, the
   per-block time of each layer group (``fp8_layers``) on each path, and the groups FP8 makes faster;
   where ``ffn_fused`` runs (sm_90; emulated on the CPU), the whole FFN on the rowwise and the fused path,
   and ``ffn_fused`` among those groups when it is the faster one. It also checks ``_scaled_mm`` against
   the emulated product (the scale layout).
2. ``e2e``: ``flashvsr-bench`` with the miner's settings (compiled element-wise chains, FP8 K/V cache,
   HEVC ultrafast), Tiny SD24K then SD2HD, ``--precision bf16 --precision fp8``: frames/s end to end
   and peak memory (its JSON: ``OUT/bench.json``; each row is also printed as it ends).
3. ``error``: random weights of the real shapes, both paths over the FP8 K/V cache (the miner's); the
   relative error of each FP8 linear against the bf16 one on the same input (captured in the bf16
   DiT), the PSNR and relative error of the latents and of the model's prediction after a first and
   two steady streaming steps, and the PSNR of the decoded output frames of the whole pipeline (bf16
   against fp8, a short SD2HD clip); the fp8 path's attention in FP8 where ``fp8_attention`` is on and
   the GPU runs it (the result says whether it did).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from miner.jobs.worker import device_class
from miner.mock_validator.metrics import psnr
from miner.protocol.tasks import UpscalingTask
from scripts import bench
from upscaler.api import Upscaler
from upscaler.geometry import Geometry
import upscaler.models.dit as dit_module
from upscaler.models.config import SparsityParams
from upscaler.models.dit import WanDiT
from upscaler.models.fp8 import (DIT_FP8_GROUPS, BlockScaledLayout, FP8BlockLinear, FP8Linear, QuantisedRows,
                                 emulated_scaled_mm, feed_forward_fp8, ffn_fused_layout, quantise, scaled_mm_supported)
from upscaler.settings import DEFAULT_FP8_LAYERS, FFN_FUSED, load_settings
from upscaler.timing import StageTimer
from upscaler.video.synthetic import write_test_clip

log = logging.getLogger("measure-fp8")

RESULT_FILE = "fp8_measure.json"
STEADY_LATENT_FRAMES = 2
ERROR_CLIP_FRAMES = 29  # the first step (21 frames) and one steady step (8)


def steady_tokens(out_size: tuple[int, int], multiple: int, patch: int = 16) -> int:
    """DiT tokens of one steady streaming step at ``out_size`` (2 latent frames, 8x VAE, 2x2 patches)."""
    geometry = Geometry.for_target(out_size, out_size, multiple)
    return STEADY_LATENT_FRAMES * (geometry.model_width // patch) * (geometry.model_height // patch)


class Clock:
    """Median milliseconds of a callable: CUDA events on a GPU, the wall clock elsewhere."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def __call__(self, fn: Callable[[], Any]) -> float:
        fn()  # warm-up (autotuning, kernel compilation)
        times = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - began))
        return round(statistics.median(times), 4)


def _fp8_product(a: QuantisedRows, layer: FP8Linear, fast_accum: bool = False) -> torch.Tensor:
    if layer.use_scaled_mm:
        return torch._scaled_mm(a.data, layer.weight.t(), scale_a=a.scale, scale_b=layer.weight_scale, bias=layer.bias,
                                out_dtype=layer.out_dtype, use_fast_accum=fast_accum)
    return emulated_scaled_mm(a.data, a.scale, layer.weight, layer.weight_scale, layer.bias, layer.out_dtype)


def _layer_norm_ms(clock: Clock, x: torch.Tensor, fp8: bool) -> dict[str, float]:
    """The block's modulated (gated add) and affine layer norms, bf16 output or FP8 rows."""
    from kernels.layer_norm import add_layer_norm

    dim = x.shape[-1]
    vec = torch.randn(dim, device=x.device, dtype=x.dtype)
    update = torch.randn_like(x)
    return {
        "modulated": clock(lambda: add_layer_norm(x, vec, vec, 1e-6, update=update, gate=vec, fp8=fp8)),
        "affine": clock(lambda: add_layer_norm(x, vec, vec, 1e-6, update=update, gate=vec, affine=True, fp8=fp8)),
    }


@torch.no_grad()
def measure_gemms(device: torch.device, dtype: torch.dtype, dim: int, ffn_dim: int, token_counts: dict[str, int],
                  repeats: int, fast_accum: bool = False) -> dict[str, Any]:
    """Section 1: the product timings per shape and token count, and the per-block cost of each group
    (its FP8 products with ``use_fast_accum`` when ``fast_accum``)."""
    clock = Clock(device, repeats)
    shapes = {"q/k/v/o": (dim, dim), "qkv fused": (dim, 3 * dim), "ffn up": (dim, ffn_dim), "ffn down": (ffn_dim, dim)}
    out: dict[str, Any] = {"shapes": {}, "groups": {}, "ffn_fused": {}, "scaled_mm": None}
    use_scaled_mm = scaled_mm_supported(device)  # probed: a build without rowwise kernels is emulated, not fatal
    layout = ffn_fused_layout(dim, ffn_dim, use_scaled_mm, device)  # None: the log says why ffn_fused cannot run
    for label, tokens in token_counts.items():
        per_shape: dict[str, Any] = {}
        for name, (k, n) in shapes.items():
            torch.manual_seed(0)
            linear = nn.Linear(k, n, device=device, dtype=dtype)
            layer = FP8Linear(linear, use_scaled_mm=use_scaled_mm)
            x = torch.randn(tokens, k, device=device, dtype=dtype)
            rows = quantise(x)
            entry = {
                "bf16_linear_ms": clock(lambda: F.linear(x, linear.weight, linear.bias)),
                "fp8_product_ms": clock(lambda: _fp8_product(rows, layer)),
                "quantise_pass_ms": clock(lambda: quantise(x)),
            }
            if use_scaled_mm:
                entry["fp8_product_fast_accum_ms"] = clock(lambda: _fp8_product(rows, layer, fast_accum=True))
            if name == "ffn up" and device.type == "cuda":
                entry["bf16_linear_gelu_epilogue_ms"] = clock(
                    lambda: torch._addmm_activation(linear.bias, x, linear.weight.t(), use_gelu=True))
            if name == "ffn down":
                entry["gelu_quantise_pass_ms"] = clock(lambda: quantise(x, gelu=True))
                entry["bf16_gelu_ms"] = clock(lambda: F.gelu(x, approximate="tanh"))
            flops = 2 * tokens * k * n
            entry["bf16_tflops"] = round(flops / entry["bf16_linear_ms"] / 1e9, 1)
            entry["fp8_tflops"] = round(flops / entry["fp8_product_ms"] / 1e9, 1)
            exact = _fp8_product(rows, FP8Linear(linear, use_scaled_mm=False)).float()
            got = _fp8_product(rows, layer).float()
            entry["product_vs_emulated_rel_error"] = _rel(got, exact)
            if use_scaled_mm:
                fast = _fp8_product(rows, layer, fast_accum=True).float()
                entry["product_fast_accum_vs_emulated_rel_error"] = _rel(fast, exact)
            per_shape[name] = entry
            del linear, layer, x, rows
        if device.type == "cuda":
            norm_in = torch.randn(tokens, dim, device=device, dtype=dtype)
            per_shape["layer norm bf16"] = _layer_norm_ms(clock, norm_in, fp8=False)
            per_shape["layer norm fp8"] = _layer_norm_ms(clock, norm_in, fp8=True)
        out["shapes"][label] = {"tokens": tokens, **per_shape}
        out["groups"][label] = group_costs(per_shape, fast_accum and use_scaled_mm)
        if layout is not None:
            out["ffn_fused"][label] = ffn_paths(clock, device, dtype, dim, ffn_dim, tokens, use_scaled_mm,
                                                fast_accum, layout)
    out["scaled_mm"] = use_scaled_mm
    largest = max(token_counts, key=token_counts.get)
    faster = [g for g, c in out["groups"][largest].items() if c["fp8_ms"] < c["bf16_ms"]]
    fused = out["ffn_fused"].get(largest)
    if fused and fused["fused_ms"] < fused["rowwise_ms"] and {"ffn_up", "ffn_down"} <= set(faster):
        faster.append(FFN_FUSED)
    out["fp8_faster_groups"] = faster
    out["decided_at"] = largest
    return out


def ffn_paths(clock: Clock, device: torch.device, dtype: torch.dtype, dim: int, ffn_dim: int, tokens: int,
              use_scaled_mm: bool, fast_accum: bool, layout: BlockScaledLayout) -> dict[str, float]:
    """The whole FFN from the layer norm's e4m3 rows on the two FP8 paths: rowwise (two products and the GELU
    and quantising pass between them) and ``ffn_fused`` (the up projection's kernel writing 1x128 blocks,
    the block-scaled down projection); and the relative error between their outputs."""
    torch.manual_seed(0)
    up, down = nn.Linear(dim, ffn_dim, device=device, dtype=dtype), nn.Linear(ffn_dim, dim, device=device, dtype=dtype)
    up8 = FP8Linear(up, use_scaled_mm=use_scaled_mm, fast_accum=fast_accum)
    down8 = FP8Linear(down, use_scaled_mm=use_scaled_mm, fast_accum=fast_accum)
    down_blocks = FP8BlockLinear(down, use_scaled_mm=use_scaled_mm, layout=layout)
    rows = quantise(torch.randn(tokens, dim, device=device, dtype=dtype))
    return {"rowwise_ms": clock(lambda: feed_forward_fp8(up8, down8, rows)),
            "fused_ms": clock(lambda: feed_forward_fp8(up8, down_blocks, rows)),
            "fused_vs_rowwise_rel_error": _rel(feed_forward_fp8(up8, down_blocks, rows),
                                               feed_forward_fp8(up8, down8, rows))}


def group_costs(shape: dict[str, Any], fast_accum: bool = False) -> dict[str, dict[str, float]]:
    """Per-block milliseconds of each ``fp8_layers`` group on each path, from one token count's timings:
    the product (with ``use_fast_accum`` when ``fast_accum``), plus what FP8 adds to feed it (the layer
    norm's FP8 variant minus its bf16 one where a norm produces the input, else the stand-alone
    quantising pass)."""
    if fast_accum:
        shape = {name: {**e, "fp8_product_ms": e["fp8_product_fast_accum_ms"]} if "fp8_product_fast_accum_ms" in e else e
                 for name, e in shape.items() if isinstance(e, dict)}
    qkvo, up, down = shape["q/k/v/o"], shape["ffn up"], shape["ffn down"]
    norm_extra = {"modulated": 0.0, "affine": 0.0}
    if "layer norm fp8" in shape:
        norm_extra = {k: shape["layer norm fp8"][k] - shape["layer norm bf16"][k] for k in norm_extra}
    bf16_up = up.get("bf16_linear_gelu_epilogue_ms", up["bf16_linear_ms"] + down["bf16_gelu_ms"])
    costs = {
        "self_qkv": (3 * qkvo["bf16_linear_ms"], 3 * qkvo["fp8_product_ms"] + norm_extra["modulated"]),
        "self_o": (qkvo["bf16_linear_ms"], qkvo["fp8_product_ms"] + qkvo["quantise_pass_ms"]),
        "cross_q": (qkvo["bf16_linear_ms"], qkvo["fp8_product_ms"] + norm_extra["affine"]),
        "cross_o": (qkvo["bf16_linear_ms"], qkvo["fp8_product_ms"] + qkvo["quantise_pass_ms"]),
        # up in FP8: its product, the norm's FP8 variant, and the GELU no longer in the bf16 epilogue;
        # down in FP8: its product, the GELU moving into its quantising pass
        "ffn_up": (bf16_up, up["fp8_product_ms"] + norm_extra["modulated"] + down["bf16_gelu_ms"]),
        "ffn_down": (down["bf16_linear_ms"], down["fp8_product_ms"] + down["gelu_quantise_pass_ms"] - down["bf16_gelu_ms"]),
    }
    return {g: {"bf16_ms": round(b, 4), "fp8_ms": round(f, 4)} for g, (b, f) in costs.items()}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def _psnr_range(got: torch.Tensor, want: torch.Tensor) -> float:
    """PSNR (dB) of ``got`` against ``want`` with the peak taken as ``want``'s value range."""
    want, got = want.float(), got.float()
    mse = float(((got - want) ** 2).mean())
    peak = float(want.max() - want.min())
    return 100.0 if mse == 0 else round(10 * math.log10(peak * peak / mse), 3)


def _fp8_twin(block: nn.Module, name: str) -> Callable[[Any], torch.Tensor] | None:
    """The FP8 product standing for linear ``name`` of ``block`` (its slice of the stacked q/k/v product),
    or None where that linear stayed in the model dtype."""
    stacked = block.self_attn.qkv
    if name in ("self_attn.q", "self_attn.k", "self_attn.v") and isinstance(stacked, FP8Linear):
        part = "qkv".index(name[-1])
        return lambda x: stacked(x).chunk(3, dim=-1)[part]
    twin = block.get_submodule(name)
    return twin if isinstance(twin, FP8Linear) else None


def layer_errors(dit_bf16: WanDiT, dit_fp8: WanDiT, run: Callable[[WanDiT], Any]) -> dict[str, Any]:
    """Relative error of each FP8 linear of ``dit_fp8`` against its bf16 twin in ``dit_bf16``, on the
    inputs the bf16 DiT gives it while ``run`` streams; per group: per block, mean and max."""
    errors: dict[str, list[list[float]]] = {g: [[] for _ in dit_bf16.blocks] for g in DIT_FP8_GROUPS}
    paths = {"self_qkv": ("self_attn.q", "self_attn.k", "self_attn.v"), "self_o": ("self_attn.o",),
             "cross_q": ("cross_attn.q",), "cross_o": ("cross_attn.o",), "ffn_up": ("ffn.0",), "ffn_down": ("ffn.2",)}
    handles = []
    fused_ffn = dit_module.feed_forward
    dit_module.feed_forward = lambda ffn, x: ffn(x)  # through the modules (not the GELU epilogue): hooks see ffn.0
    for index, (plain, fp8) in enumerate(zip(dit_bf16.blocks, dit_fp8.blocks)):
        for group, names in paths.items():
            for name in names:
                twin = _fp8_twin(fp8, name)
                if twin is None:
                    continue

                def hook(module, args, output, twin=twin, group=group, index=index):
                    errors[group][index].append(_rel(twin(args[0]), output))

                handles.append(plain.get_submodule(name).register_forward_hook(hook))
    try:
        run(dit_bf16)
    finally:
        dit_module.feed_forward = fused_ffn
        for handle in handles:
            handle.remove()
    report = {}
    for group, per_block in errors.items():
        values = [v for block in per_block for v in block]
        if values:
            report[group] = {"mean": round(statistics.fmean(values), 5), "max": round(max(values), 5),
                             "per_block": [round(statistics.fmean(b), 5) for b in per_block]}
    return report


def stream(dit: WanDiT, noise: list[torch.Tensor], sparsity: SparsityParams,
           fp8_attention: bool = False) -> list[torch.Tensor]:
    """The latents of streaming steps over ``noise`` chunks (no LQ features: the DiT's own numerics), over
    the FP8 cache (with ``fp8_attention``: attention's products in FP8)."""
    cache = dit.new_cache(torch.float8_e4m3fn, fp8_attention=fp8_attention)
    return [dit.stream_step(n, None, cache, step=i, sparsity=sparsity) for i, n in enumerate(noise)]


def lq_feature_errors(lq_bf16: torch.nn.Module, lq_fp8: torch.nn.Module, size: tuple[int, int],
                      calls: int = 3) -> list[float]:
    """Relative error of the fp8 LQ projection's features against the bf16 one's, per streamed call (4 frames
    each after the first), on smooth random frames of ``size`` (W, H) in [-1, 1] (4x bicubic-upscaled noise)."""
    width, height = size
    g = torch.Generator(device="cpu").manual_seed(2)
    small = torch.rand(1, 3 * (1 + 4 * calls), height // 4, width // 4, generator=g) * 2 - 1
    frames = F.interpolate(small, size=(height, width), mode="bicubic").view(1, 3, -1, height, width)
    frames = frames.to(next(lq_bf16.parameters()).device)
    errors = []
    for lq in (lq_bf16, lq_fp8):
        lq.reset()
    for start in [0] + list(range(1, frames.shape[2], 4)):
        chunk = frames[:, :, start:start + (1 if start == 0 else 4)]
        want, got = lq_bf16.stream(chunk), lq_fp8.stream(chunk)
        if want is not None:
            errors.append(round(_rel(torch.cat(got), torch.cat(want)), 5))
    for lq in (lq_bf16, lq_fp8):
        lq.reset()
    return errors


def _output_frames(upscaler: Upscaler, clip: Path, geometry: Geometry) -> torch.Tensor:
    frames = list(upscaler.upscale_frames(clip, geometry, upscaler.settings.variant("tiny"),
                                          timer=StageTimer(upscaler.device)))
    return torch.cat(frames).permute(0, 3, 1, 2).float()  # (N, 3, H, W) in [0, 255]


@torch.no_grad()
def measure_errors(weights: str, device: str, in_size: tuple[int, int], out_size: tuple[int, int],
                   work: Path, groups: tuple[str, ...], fast_accum: bool = False,
                   attention: bool | None = None) -> dict[str, Any]:
    """Section 3: per-layer errors, latent PSNR and output-frame PSNR, fp8 against bf16 (``attention``:
    the fp8 path's ``fp8_attention``, None: the settings')."""
    clip = write_test_clip(work / "error-clip.mp4", *in_size, ERROR_CLIP_FRAMES)
    upscalers = {p: Upscaler.load(load_settings(weights=weights, device=device, precision=p, fp8_layers=groups,
                                                fp8_fast_accum=fast_accum, kv_cache_dtype="fp8",
                                                fp8_attention=attention))
                 for p in ("bf16", "fp8")}
    bf16, fp8 = upscalers["bf16"], upscalers["fp8"]
    geometry = Geometry.for_target(in_size, out_size, bf16.settings.spatial_multiple)
    frames = {p: _output_frames(u, clip, geometry) for p, u in upscalers.items()}
    dit_bf16, dit_fp8 = bf16._components.dit, fp8._components.dit
    sparsity = SparsityParams(sparse_ratio=bf16.settings.sparsity.sparse_ratio,
                              kv_ratio=bf16.settings.sparsity.kv_ratio, local_range=bf16.settings.sparsity.local_range)
    g = torch.Generator(device="cpu").manual_seed(0)
    h, w = geometry.model_height // 8, geometry.model_width // 8
    noise = [torch.randn(1, 16, f, h, w, generator=g).to(dit_bf16.device, dit_bf16.dtype) for f in (6, 2, 2)]
    per_layer = layer_errors(dit_bf16, dit_fp8, lambda d: stream(d, noise, sparsity))
    lq_errors = lq_feature_errors(bf16._components.lq_proj, fp8._components.lq_proj, geometry.model_size)
    want, got = stream(dit_bf16, noise, sparsity), stream(dit_fp8, noise, sparsity, fp8.fp8_attention_active)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return {
        "weights": bf16.weights_label, "fp8_layers": list(groups), "fp8_fast_accum": fast_accum,
        "kv_cache": "fp8", "fp8_attention": fp8.fp8_attention_active, "model_size": list(geometry.model_size),
        "per_layer_rel_error": per_layer,
        "lq_features_rel_error": lq_errors,
        "latents": [{"step": i, "psnr_db": _psnr_range(b, a), "rel_error": round(_rel(b, a), 5),
                     "prediction_psnr_db": _psnr_range(n - b, n - a), "prediction_rel_error": round(_rel(n - b, n - a), 5)}
                    for i, (a, b, n) in enumerate(zip(want, got, noise))],
        "output": {"frames": int(frames["bf16"].shape[0]), "size": list(out_size),
                   "psnr_rgb_db": round(psnr(frames["bf16"], frames["fp8"]), 3),
                   "psnr_luma_db": round(psnr((frames["bf16"] * luma).sum(1, keepdim=True),
                                              (frames["fp8"] * luma).sum(1, keepdim=True)), 3)},
    }


def throughput_rows(rows: list[dict[str, Any]], device: str, fast_accum: bool = False) -> str:
    """``configs/throughput.toml`` entries for the fp8 rows of a bench run (paste them beside the bf16 ones;
    each says whether it was measured with fast accumulation: it prices a miner run with that setting)."""
    entries = []
    how = "--precision fp8 --fp8-fast-accum" if fast_accum else "--precision fp8 --no-fp8-fast-accum"
    for row in rows:
        if row.get("precision") != "fp8" or "error" in row:
            continue
        width, height = row["out_size"]
        entries.append(f"[[entry]]   # {row['case']}, flashvsr-bench {how} (scripts/measure_fp8.py)\n"
                       f'device = "{device}"\nvariant = "{row["variant"]}"\nprecision = "fp8"\n'
                       f"width = {width}\nheight = {height}\nfps = {row['fps']}\npeak_gib = {row['peak_vram_gib']}\n")
    return "\n".join(entries)


def write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2))


def summary(result: dict[str, Any]) -> str:
    """The human lines: the per-group cost at the decisive token count, errors, end-to-end rows."""
    lines = []
    gemm = result.get("gemm")
    if gemm:
        label = gemm["decided_at"]
        lines.append(f"per-block ms at {label} ({gemm['shapes'][label]['tokens']} tokens), "
                     f"_scaled_mm {'on' if gemm['scaled_mm'] else 'off (emulated)'}:")
        for name, e in gemm["shapes"][label].items():
            if isinstance(e, dict) and "bf16_linear_ms" in e:
                lines.append(f"  {name:10} bf16 {e['bf16_linear_ms']:.3f} ms ({e['bf16_tflops']} TFLOP/s), fp8 "
                             f"{e['fp8_product_ms']:.3f} ms ({e['fp8_tflops']} TFLOP/s), fast-accum "
                             f"{e.get('fp8_product_fast_accum_ms', float('nan')):.3f}, quantise pass "
                             f"{e['quantise_pass_ms']:.3f}; vs emulated rel. error {e['product_vs_emulated_rel_error']:.2e}, "
                             f"fast-accum {e.get('product_fast_accum_vs_emulated_rel_error', float('nan')):.2e}")
            elif isinstance(e, dict):
                lines.append(f"  {name:15} " + ", ".join(f"{k} {v:.3f} ms" for k, v in e.items()))
        for group, cost in gemm["groups"][label].items():
            lines.append(f"  {group:9} bf16 {cost['bf16_ms']:8.3f}  fp8 {cost['fp8_ms']:8.3f}")
        fused = gemm["ffn_fused"].get(label)
        if fused:
            lines.append(f"  FFN in FP8: rowwise {fused['rowwise_ms']:.3f} ms, ffn_fused {fused['fused_ms']:.3f} ms "
                         f"(outputs differ by {fused['fused_vs_rowwise_rel_error']:.2e})")
        lines.append(f"  FP8 faster: {', '.join(gemm['fp8_faster_groups']) or 'none'}  "
                     f"-> fp8_layers = {json.dumps(gemm['fp8_faster_groups'])}")
    error = result.get("error")
    if error:
        for group, e in error["per_layer_rel_error"].items():
            lines.append(f"  rel error {group:9} mean {e['mean']:.4f} max {e['max']:.4f}")
        lines.append("  LQ features rel error per call " + ", ".join(f"{v:.4f}" for v in error["lq_features_rel_error"]))
        lines.append("  latents PSNR " + ", ".join(f"step {s['step']}: {s['psnr_db']:.2f} dB" for s in error["latents"])
                     + "; model prediction (noise - latents) PSNR "
                     + ", ".join(f"{s['prediction_psnr_db']:.2f} dB" for s in error["latents"]))
        lines.append(f"  output PSNR (bf16 vs fp8, FP8 cache, fp8 attention {'on' if error.get('fp8_attention') else 'off'}) "
                     f"RGB {error['output']['psnr_rgb_db']:.2f} dB, luma {error['output']['psnr_luma_db']:.2f} dB")
    for row in result.get("e2e", {}).get("rows", []):
        lines.append(f"  {row['case']:20} {row.get('precision', ''):5}{' +attn' if row.get('fp8_attention') else '      '} "
                     + (f"ERROR {row['error']}" if "error" in row else f"{row['fps']:7.2f} fps {row['peak_vram_gib']:6.2f} GiB"))
    if result.get("throughput_rows_toml"):
        lines.append("configs/throughput.toml rows:\n" + result["throughput_rows_toml"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="measure-fp8", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="directory for fp8_measure.json (and bench.json)")
    p.add_argument("--frames", type=int, default=300, help="frames per end-to-end case")
    p.add_argument("--sections", default="gemm,error,e2e", help="comma-separated subset of gemm,error,e2e")
    p.add_argument("--fp8-layers", default=",".join(DEFAULT_FP8_LAYERS),
                   help="groups converted in error and e2e, or 'measured': the groups the gemm section found faster")
    p.add_argument("--fast-accum", action=argparse.BooleanOptionalAction,
                   help="FP8 products with use_fast_accum in the group costs, error and e2e, or without "
                        "(--no-fast-accum; default: configs/upscaler.toml fp8_fast_accum)")
    p.add_argument("--fp8-attention", action=argparse.BooleanOptionalAction,
                   help="the fp8 path's attention in FP8 in error and e2e, or over the dequantised cache "
                        "(--no-fp8-attention; default: configs/upscaler.toml fp8_attention)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per product")
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: random-small weights, no e2e")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sections = set(args.sections.split(","))
    measured_groups = args.fp8_layers == "measured"
    if measured_groups and "gemm" not in sections:
        print("--fp8-layers measured takes the groups from the gemm section: add gemm to --sections")
        return 2
    groups = () if measured_groups else tuple(g for g in args.fp8_layers.split(",") if g)
    fast_accum = load_settings().fp8_fast_accum if args.fast_accum is None else args.fast_accum
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("measure-fp8 measures GPU speed: no CUDA device here (use --smoke for the CPU walk-through)")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    began = time.perf_counter()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "fp8_layers": list(groups),
        "fp8_fast_accum": fast_accum, "seconds": {},
    }
    if "gemm" in sections:
        t0 = time.perf_counter()
        if cuda:
            tokens = {task.value: steady_tokens(task.output_size, 128) for task in (UpscalingTask.SD2HD, UpscalingTask.SD24K)}
            result["gemm"] = measure_gemms(device, torch.bfloat16, 1536, 8960, tokens, args.repeats, fast_accum)
        else:
            result["gemm"] = measure_gemms(device, torch.float32, 256, 512, {"toy": 256}, 2, fast_accum)
        if measured_groups:
            groups = tuple(result["gemm"]["fp8_faster_groups"])
            result["fp8_layers"] = list(groups)
        result["seconds"]["gemm"] = round(time.perf_counter() - t0, 1)
        write(args.out, result)
        print(summary(result), flush=True)
    if "e2e" in sections and cuda:
        t0 = time.perf_counter()
        bench_json = args.out / "bench.json"
        argv_bench = ["--weights", "random", "--compile", "--kv-cache", "fp8", "--preset", "ultrafast",
                      "--case", f"tiny:SD24K:{args.frames}", "--case", f"tiny:SD2HD:{args.frames}",
                      "--precision", "bf16", "--precision", "fp8", "--fp8-layers", ",".join(groups),
                      "--json", str(bench_json), "--fp8-fast-accum" if fast_accum else "--no-fp8-fast-accum"]
        if args.fp8_attention is not None:
            argv_bench.append("--fp8-attention" if args.fp8_attention else "--no-fp8-attention")
        code = bench.main(argv_bench)
        result["e2e"] = json.loads(bench_json.read_text()) if bench_json.exists() else {"error": f"bench exit {code}"}
        result["throughput_rows_toml"] = throughput_rows(result["e2e"].get("rows", []), device_class("cuda"), fast_accum)
        result["seconds"]["e2e"] = round(time.perf_counter() - t0, 1)
        write(args.out, result)
    with tempfile.TemporaryDirectory(prefix="measure-fp8-") as tmp:
        if "error" in sections:
            t0 = time.perf_counter()
            if cuda:
                task = UpscalingTask.SD2HD
                result["error"] = measure_errors("random", "cuda", task.input_size, task.output_size, Path(tmp), groups,
                                                 fast_accum, args.fp8_attention)
            else:
                result["error"] = measure_errors("random-small", "cpu", (64, 48), (128, 96), Path(tmp), groups,
                                                 fast_accum, args.fp8_attention)
            result["seconds"]["error"] = round(time.perf_counter() - t0, 1)
            write(args.out, result)
            print(summary({"error": result["error"]}), flush=True)
    result["seconds"]["total"] = round(time.perf_counter() - began, 1)
    write(args.out, result)
    print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
