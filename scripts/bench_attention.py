"""Benchmark LCSA block-sparse attention at FlashVSR's real shapes on a CUDA GPU.

For each case (first step: 3 query time slices x 3 key slices; steady step: 1 query slice x 3 cached + 1
current key slices; outputs 1920x1080 and 3840x2160 padded to multiples of 128) it builds the real LCSA
mask from random q/k (sparse_ratio 2, local_range 11) and times, with ``triton.testing.do_bench``
(median): our Triton kernel, compiled flex_attention with the same mask, dense SDPA (flash backend) on
the full sequence, and the mask builder. Prints a markdown table; ``--out`` (or ``$OUT``) gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_attention.py --check --out $OUT/attn.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from kernels import gluon_sparse, triton_sparse  # noqa: E402
from kernels.flex import _compiled_flex, to_flex_block_mask  # noqa: E402
from kernels.reference import (  # noqa: E402
    FP8KeysValues,
    SliceScales,
    block_probabilities,
    block_scores,
    dequantize_slices,
    lcsa_block_mask_torch,
    pool_blocks,
    quantize_slices,
)
from kernels.triton_sparse import compact_block_lists, sparse_attention_triton  # noqa: E402

HEADS, HEAD_DIM = 12, 128
SPARSE_RATIO, LOCAL_RANGE = 2.0, 11
BASE_PIXELS = 768 * 1280


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    query_slices: int
    key_slices: int

    @property
    def padded_height(self) -> int:
        return math.ceil(self.height / 128) * 128

    @property
    def padded_width(self) -> int:
        return math.ceil(self.width / 128) * 128

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.padded_height // 16, self.padded_width // 16

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.patch_grid
        return h // 8, w // 8

    @property
    def topk(self) -> int:
        h, w = self.patch_grid
        square_num = (2 * h * w // 128) ** 2
        ratio = SPARSE_RATIO * BASE_PIXELS / (self.padded_height * self.padded_width)
        return int(square_num * ratio) - 1


# The target case (steady 3840x2160) first.
CASES = (
    Case("steady 3840x2160", 3840, 2160, 1, 4),
    Case("first 3840x2160", 3840, 2160, 3, 3),
    Case("steady 1920x1080", 1920, 1080, 1, 4),
    Case("first 1920x1080", 1920, 1080, 3, 3),
)


def bench(fn, rep: int = 200) -> float:
    return float(do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def reference_rows(q, k, v, mask, heads: list[int], n_rows: int,
                   picks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 attention for a subset of (head, query block) rows (longest, shortest and spread rows), or
    for the rows ``picks`` of an earlier call."""
    counts = mask[0].sum(-1)
    if picks is not None:
        picks = [tuple(p) for p in picks.tolist()]
    else:
        picks = []
        for h in heads:
            order = torch.argsort(counts[h], descending=True)
            sel = torch.cat([order[: n_rows // 2], order[-n_rows // 4:],
                             order[torch.randperm(order.numel())[: n_rows // 4]]])
            picks += [(h, int(r)) for r in sel]
    outs = []
    for h, r in picks:
        cols = mask[0, h, r].nonzero().flatten()
        rows = slice(r * 128, (r + 1) * 128)
        if cols.numel() == 0:
            outs.append(torch.zeros(128, v.shape[-1], device=q.device))
            continue
        keys = (cols[:, None] * 64 + torch.arange(64, device=q.device)).flatten()
        s = q[0, h, rows].float() @ k[0, h, keys].float().T / math.sqrt(q.shape[-1])
        outs.append(torch.softmax(s, -1) @ v[0, h, keys].float())
    index = torch.tensor(picks, device=q.device)
    return index, torch.stack(outs)


def kept_block_flops(mask: torch.Tensor) -> float:
    """Multiply-add FLOPs of Q.K^T and P.V over the kept (128 x 64) blocks."""
    return 4.0 * 128 * 64 * HEAD_DIM * int(mask.sum())


def dense_reference(q, k, v, mask) -> torch.Tensor:
    """float64 attention over the kept blocks of ``mask`` (rows with nothing kept give 0)."""
    tokens = mask.repeat_interleave(128, 2).repeat_interleave(64, 3)
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~tokens, -math.inf), -1).nan_to_num(0) @ v.double()


def max_err(out: torch.Tensor, index: torch.Tensor, ref: torch.Tensor) -> float:
    got = torch.stack([out[0, h, r * 128:(r + 1) * 128].float() for h, r in index.tolist()])
    return float((got - ref).abs().max())


# Our kernels: the warp-specialised Gluon kernel (the default on sm_90), the Triton kernel with TMA loads
# (Hopper and newer otherwise) and with pointer gathers (the pre-Hopper path).
VARIANTS = {"ws": {"warp_specialized": True}, "tma": {"use_tma": True, "warp_specialized": False},
            "ptr": {"use_tma": False, "warp_specialized": False}}
TRITON_VARIANTS = ("tma", "ptr")
WS_SWEEP = ({"stages": 2}, {"pairs": 1, "stages": 3}, {"pairs": 1, "stages": 4},
            {"split": 1, "num_warps": 8, "pairs": 1, "stages": 4})


def make_inputs(case: Case):
    """bf16 q (the DiT's (B, L, H, D) memory) and k/v (the cache's (B, H, L, D) memory) at the case's
    shape, and the real LCSA mask."""
    torch.manual_seed(0)
    nw = case.grid[0] * case.grid[1]
    lq, lk = case.query_slices * nw * 128, case.key_slices * nw * 128
    q = torch.randn(1, lq, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(1, HEADS, lk, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = lcsa_block_mask_torch(q, k, local_range=LOCAL_RANGE, topk=case.topk, grid=case.grid)
    return q, k, v, mask


def sweep_configs() -> list[tuple[str, dict]]:
    """Every autotune candidate of both Triton load paths."""
    return [
        (name, dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        for name in TRITON_VARIANTS
        for cfg in triton_sparse._autotune_configs(VARIANTS[name]["use_tma"])
    ]


def kernels_here(q, k, v) -> list[str]:
    """Our kernel variants that can run these inputs on this GPU (the Gluon one needs sm_90)."""
    return [name for name in VARIANTS if name != "ws" or gluon_sparse.supported(q, k, v)]


def kernel_config(name: str) -> str:
    """The launch configuration a variant ran with (the autotuner's choice for the Triton kernel)."""
    if name == "ws":
        return str(gluon_sparse.LAUNCH_OPTIONS)
    return str(triton_sparse.tuned_kernel(VARIANTS[name]["use_tma"]).best_config)


def sweep_ws(q, k, v, mask) -> dict:
    """The Gluon kernel with other stage counts than its default."""
    idx, cnt, order = compact_block_lists(mask)
    sweep = {}
    for opts in WS_SWEEP:
        try:
            ms = bench(lambda: gluon_sparse.sparse_attention_gluon(q, k, v, idx, cnt, order, options=opts), rep=100)
        except Exception as exc:  # noqa: BLE001 - a stage count may not fit shared memory
            ms = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
        sweep[f"ws {opts} (lists not timed)"] = ms
        print(f"  sweep ws {opts}: {ms}", flush=True)
    return sweep


def run_case(case: Case, args) -> dict:
    q, k, v, mask = make_inputs(case)
    lq, lk = q.shape[2], k.shape[2]
    margs = {"local_range": LOCAL_RANGE, "topk": case.topk, "grid": case.grid}
    counts = mask.sum(-1).float()
    kept = int(mask.sum())
    res = {
        **asdict(case), "grid": case.grid, "topk": case.topk, "lq": lq, "lk": lk,
        "kept_pairs": kept, "kept_fraction": kept / mask.numel(),
        "row_count_mean": float(counts.mean()), "row_count_max": int(counts.max()),
        "row_count_min": int(counts.min()), "empty_rows": int((counts == 0).sum()),
    }
    res["row_imbalance_max_over_mean"] = res["row_count_max"] / max(res["row_count_mean"], 1e-9)
    flops = kept_block_flops(mask)
    k_pooled = pool_blocks(k, 64)
    res["mask_torch_ms"] = bench(lambda: lcsa_block_mask_torch(q, k, **margs))
    res["mask_pooled_keys_ms"] = bench(lambda: lcsa_block_mask_torch(q, k, **margs, k_pooled=k_pooled))
    res["mask_pool_scores_ms"] = bench(lambda: block_scores(q, k))
    res["mask_probabilities_ms"] = bench(lambda: block_probabilities(q, k, local_range=LOCAL_RANGE, grid=case.grid))
    res["lists_ms"] = bench(lambda: compact_block_lists(mask))

    index, ref = reference_rows(q, k, v, mask, heads=[0, HEADS - 1], n_rows=48)
    outs = {}
    for name in kernels_here(q, k, v):
        opts = VARIANTS[name]
        outs[name] = sparse_attention_triton(q, k, v, mask, **opts)  # autotunes on first use
        res[f"{name}_config"] = kernel_config(name)
        res[f"{name}_ms"] = bench(lambda: sparse_attention_triton(q, k, v, mask, **opts))
        res[f"{name}_tflops"] = flops / res[f"{name}_ms"] * 1e-9
        res[f"{name}_max_abs_err"] = max_err(outs[name], index, ref)
    # "ours" is what the DiT calls: the default path of sparse_attention_triton on this GPU
    ours = kernels_here(q, k, v)[0]
    res["ours_kernel"] = ours
    for key in ("ms", "tflops", "max_abs_err"):
        res[f"triton_{key}"] = res[f"{ours}_{key}"]
    res["triton_lpt_ms"] = bench(lambda: sparse_attention_triton(q, k, v, mask, schedule="lpt"))
    if args.sweep:
        sweep = sweep_ws(q, k, v, mask) if "ws" in outs else {}
        for name, conf in sweep_configs() if args.sweep == "all" else ():
            try:
                ms = bench(lambda: sparse_attention_triton(q, k, v, mask, config=conf, **VARIANTS[name]), rep=100)
            except Exception as exc:  # noqa: BLE001 - a config may not fit shared memory or not compile
                ms = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            sweep[f"{name} {conf}"] = ms
            print(f"  sweep {name} {conf}: {ms}", flush=True)
        res["triton_sweep_ms"] = sweep

    block_mask = to_flex_block_mask(mask, lq, lk)
    flex = _compiled_flex()
    out_flex = flex(q, k, v, block_mask=block_mask)
    res["flex_ms"] = bench(lambda: flex(q, k, v, block_mask=block_mask))
    res["flex_mask_convert_ms"] = bench(lambda: to_flex_block_mask(mask, lq, lk))
    res["flex_tflops"] = flops / res["flex_ms"] * 1e-9
    res["flex_max_abs_err"] = max_err(out_flex, index, ref)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        res["sdpa_dense_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v), rep=300)
    res["sdpa_dense_tflops"] = 4.0 * lq * lk * HEAD_DIM * HEADS / res["sdpa_dense_ms"] * 1e-9

    res.update(fp8_variants(q, k, v, mask, case, index, ref, sweep=args.sweep is not None))
    res["speedup_vs_flex"] = res["flex_ms"] / res["triton_ms"]
    res["speedup_vs_sdpa"] = res["sdpa_dense_ms"] / res["triton_ms"]
    res["mask_fraction_of_attention"] = res["mask_pooled_keys_ms"] / res["triton_ms"]
    del q, k, v, outs, out_flex
    torch.cuda.empty_cache()
    return res


def fp8_variants(q, k, v, mask, case: Case, index, ref, *, sweep: bool = False) -> dict:
    """Our kernels on the FP8 cache as stored (e4m3, one scale per slice and head): the Triton kernel's
    FP8 Q.K^T (Q quantised per row, P.V in bf16 over the dequantised values) and, on sm_90, the FP8
    warp-specialised kernel (``fp8ws``: both products in FP8 over the keys and the transposed values;
    with ``sweep`` also its stage counts), each with its error against fp32 attention over the
    dequantised K/V (the kernel's own error) and over the bf16 K/V (including the cache's
    quantisation). ``dequant_kv_ms`` / ``dequant_v_ms``: the compiled dequantisation of K and V (the bf16
    path over the FP8 cache) or of V alone (the FP8 Q.K path)."""
    slice_len = case.grid[0] * case.grid[1] * 128
    (k8, ks), (v8, vs) = quantize_slices(k, slice_len), quantize_slices(v, slice_len)
    k_deq, v_deq = (dequantize_slices(x, s_, slice_len, torch.bfloat16) for x, s_ in ((k8, ks), (v8, vs)))
    _, ref_deq = reference_rows(q, k_deq, v_deq, mask, heads=[0, HEADS - 1], n_rows=48, picks=index)
    dequant = torch.compile(dequantize_slices, dynamic=False)
    res = {"dequant_kv_ms": bench(lambda: (dequant(k8, ks, slice_len, torch.bfloat16),
                                           dequant(v8, vs, slice_len, torch.bfloat16))),
           "dequant_v_ms": bench(lambda: dequant(v8, vs, slice_len, torch.bfloat16))}
    scales = SliceScales(ks, slice_len)
    out = sparse_attention_triton(q, k8, v_deq, mask, key_scales=scales)
    res["fp8qk_config"] = str(triton_sparse.tuned_kernel(True).best_config)
    res["fp8qk_ms"] = bench(lambda: sparse_attention_triton(q, k8, v_deq, mask, key_scales=scales))
    res["fp8qk_tflops"] = kept_block_flops(mask) / res["fp8qk_ms"] * 1e-9
    res["fp8qk_max_abs_err_vs_dequantised"] = max_err(out, index, ref_deq)
    res["fp8qk_max_abs_err_vs_bf16_kv"] = max_err(out, index, ref)
    if triton_sparse.fp8_kernel_available(q.device):
        from kernels import gluon_sparse_fp8

        kv = FP8KeysValues(k8, v8.transpose(2, 3).contiguous(), ks, vs, slice_len)
        out = triton_sparse.sparse_attention_fp8_cache(q, kv, mask)
        res["fp8ws_options"] = gluon_sparse_fp8.LAUNCH_OPTIONS
        res["fp8ws_ms"] = bench(lambda: triton_sparse.sparse_attention_fp8_cache(q, kv, mask))
        res["fp8ws_tflops"] = kept_block_flops(mask) / res["fp8ws_ms"] * 1e-9
        res["fp8ws_max_abs_err_vs_dequantised"] = max_err(out, index, ref_deq)
        res["fp8ws_max_abs_err_vs_bf16_kv"] = max_err(out, index, ref)
        if sweep:
            idx, cnt, order = compact_block_lists(mask)
            res["fp8ws_sweep_ms"] = {}
            for stages in (2, 3):
                call = lambda: gluon_sparse_fp8.sparse_attention_gluon_fp8(  # noqa: E731
                    q, kv, idx, cnt, order, options={"stages": stages})
                res["fp8ws_sweep_ms"][f"stages {stages} (lists not timed)"] = bench(call)
    return res


def profile_once(case: Case) -> None:
    """Run both load paths and flex once after a warm-up (autotuning, compilation) inside a profiler
    range: ``ncu --profile-from-start off ... --profile-once`` sees exactly one launch of each."""
    q, k, v, mask = make_inputs(case)
    block_mask = to_flex_block_mask(mask, q.shape[2], k.shape[2])
    flex = _compiled_flex()
    calls = [(name, lambda opts=VARIANTS[name]: sparse_attention_triton(q, k, v, mask, **opts))
             for name in kernels_here(q, k, v)]
    calls.append(("flex", lambda: flex(q, k, v, block_mask=block_mask)))
    for _, call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, call in calls:
        print("profiled:", name, flush=True)
        call()
        torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def small_checks() -> list[dict]:
    """Small-shape correctness vs float64 on the GPU: bf16/fp16, D 64 and 128, empty and full rows, both
    load paths with their configs."""
    results = []
    for dtype in (torch.bfloat16, torch.float16):
        for d in (64, 128):
            g = torch.Generator(device="cuda").manual_seed(d)
            q = torch.randn(2, 3, 4 * 128, d, device="cuda", generator=g).to(dtype)
            k = torch.randn(2, 3, 23 * 64, d, device="cuda", generator=g).to(dtype)
            v = torch.randn(2, 3, 23 * 64, d, device="cuda", generator=g).to(dtype)
            mask = torch.rand(2, 3, 4, 23, device="cuda", generator=g) < 0.3
            mask[0, 0, 0] = False
            mask[1, 2, 3] = True
            ref = dense_reference(q, k, v, mask)
            if "ws" in kernels_here(q, k, v):
                err = float((sparse_attention_triton(q, k, v, mask, **VARIANTS["ws"]).double() - ref).abs().max())
                results.append({"dtype": str(dtype), "d": d, "path": "ws", "config": kernel_config("ws"),
                                "max_abs_err": err, "ok": err < (2e-2 if dtype == torch.bfloat16 else 4e-3)})
            for name in TRITON_VARIANTS:
                opts = VARIANTS[name]
                configs = triton_sparse._autotune_configs(opts["use_tma"])
                # every config for the production combination, the first and last for the others
                picks = configs if (dtype, d) == (torch.bfloat16, 128) else [configs[0], configs[-1]]
                for cfg in picks:
                    conf = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                    out = sparse_attention_triton(q, k, v, mask, config=conf, **opts)
                    err = float((out.double() - ref).abs().max())
                    results.append({"dtype": str(dtype), "d": d, "path": name, "config": str(conf),
                                    "max_abs_err": err, "ok": err < (2e-2 if dtype == torch.bfloat16 else 4e-3)})
            results += _fp8_checks(q, k, v, mask, dtype, d)
    return results


def _fp8_checks(q, k, v, mask, dtype, d) -> list[dict]:
    """FP8 keys (slices of 256 tokens, Q.K^T in FP8), both load paths, first and last config, against
    float64 attention over the dequantised keys."""
    slice_len = 256
    lk = k.shape[2] // slice_len * slice_len
    k, v, mask = k[:, :, :lk], v[:, :, :lk], mask[..., : lk // 64]
    k8, ks = quantize_slices(k, slice_len)
    ref = dense_reference(q, dequantize_slices(k8, ks, slice_len, torch.float64), v, mask)
    results = []
    for name in TRITON_VARIANTS:
        opts = VARIANTS[name]
        configs = triton_sparse._autotune_configs(opts["use_tma"])
        for cfg in (configs[0], configs[-1]):
            conf = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            out = sparse_attention_triton(q, k8, v, mask, key_scales=SliceScales(ks, slice_len), config=conf, **opts)
            err = float((out.double() - ref).abs().max())
            results.append({"dtype": str(dtype), "d": d, "path": f"{name} fp8 q.k", "config": str(conf),
                            "max_abs_err": err, "ok": err < 5e-2})  # Q rounded to e4m3: see docs
    return results


def table(rows: list[dict]) -> str:
    head = ("| case | Lq x Lk | kept | rows max/mean | ours ms | TFLOP/s | flex ms | TFLOP/s | dense SDPA ms"
            " | x flex | x SDPA | Triton kernel (TMA) ms | pointer-load path ms | mask ms | mask / ours | err ours"
            " | err flex |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['lq']} x {r['lk']} | {100 * r['kept_fraction']:.2f}% |"
            f" {r['row_imbalance_max_over_mean']:.2f} | {r['triton_ms']:.2f} | {r['triton_tflops']:.0f} |"
            f" {r['flex_ms']:.2f} | {r['flex_tflops']:.0f} | {r['sdpa_dense_ms']:.1f} | {r['speedup_vs_flex']:.2f} |"
            f" {r['speedup_vs_sdpa']:.1f} | {r['tma_ms']:.2f} | {r['ptr_ms']:.2f} | {r['mask_pooled_keys_ms']:.2f} |"
            f" {100 * r['mask_pooled_keys_ms'] / r['triton_ms']:.0f}% | {r['triton_max_abs_err']:.1e} |"
            f" {r['flex_max_abs_err']:.1e} |"
        )
    lines += ["", "| case | ours bf16 ms | on the FP8 cache (+ dequantise K, V) ms | ours FP8 Q.K ms |"
              " on the FP8 cache (+ dequantise V) ms | x flex (kernel) | err vs dequantised | err vs bf16 K/V |"
              " FP8 Q.K + P.V (sm_90) ms | TFLOP/s | x bf16 on the FP8 cache | err vs dequantised | err vs bf16 K/V |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fp8ws = (f" {r['fp8ws_ms']:.2f} | {r['fp8ws_tflops']:.0f} |"
                 f" {(r['triton_ms'] + r['dequant_kv_ms']) / r['fp8ws_ms']:.2f} |"
                 f" {r['fp8ws_max_abs_err_vs_dequantised']:.1e} | {r['fp8ws_max_abs_err_vs_bf16_kv']:.1e} |"
                 if "fp8ws_ms" in r else " - | - | - | - | - |")
        lines.append(
            f"| {r['name']} | {r['triton_ms']:.2f} | {r['triton_ms'] + r['dequant_kv_ms']:.2f} | {r['fp8qk_ms']:.2f} |"
            f" {r['fp8qk_ms'] + r['dequant_v_ms']:.2f} | {r['flex_ms'] / r['fp8qk_ms']:.2f} |"
            f" {r['fp8qk_max_abs_err_vs_dequantised']:.1e} | {r['fp8qk_max_abs_err_vs_bf16_kv']:.1e} |" + fp8ws
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="small-shape bf16/fp16 correctness of every config first")
    parser.add_argument("--sweep", nargs="?", const="all", choices=("all", "ws"),
                        help="also time every kernel config explicitly (ws: the warp-specialised kernel's only)")
    parser.add_argument("--cases", default="all", help="comma-separated case indices (default: all)")
    parser.add_argument("--profile-once", action="store_true",
                        help="only run each variant and flex twice on the first case (for ncu), no timing")
    parser.add_argument("--out", default=os.path.join(os.environ["OUT"], "attn.json") if os.environ.get("OUT") else None)
    args = parser.parse_args()
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d")}
    print(env, flush=True)
    report: dict = {"env": env}
    if args.check:
        report["checks"] = small_checks()
        bad = [c for c in report["checks"] if not c["ok"]]
        print(f"small checks: {len(report['checks']) - len(bad)} ok, {len(bad)} failed", bad, flush=True)
    picks = CASES if args.cases == "all" else [CASES[int(i)] for i in args.cases.split(",")]
    if args.profile_once:
        profile_once(picks[0])
        return
    report["cases"] = []
    for case in picks:
        t0 = time.time()
        res = run_case(case, args)
        report["cases"].append(res)
        print(json.dumps(res), f"({time.time() - t0:.0f} s)", flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report["cases"]))


if __name__ == "__main__":
    main()
