"""Benchmark the DiT's FFN (1536 -> 8960, tanh GELU, 8960 -> 1536) on a CUDA GPU at one block step's token count:
bf16 (cuBLAS with the GELU in its epilogue), today's FP8 path (two rowwise ``torch._scaled_mm`` and the GELU +
row quantising pass between them) and ``fp8_layers`` ``ffn_fused`` (the up projection's FP8 kernel writing e4m3
in 1x128 blocks, :mod:`kernels.fp8_ffn_up`, for each candidate tile, then the block-scaled down projection with
128x128 weight tiles; also timed with the other weight recipe cuBLAS takes, 1x128 blocks), each part timed
alone and the whole FFN; relative errors against the fp32 FFN. Both FP8 paths start from the same e4m3 rows
(the layer norm writes them). Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_ffn_fp8.py --out $OUT/ffn_fp8.json
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton.testing import do_bench  # noqa: E402

from kernels.fp8_ffn_up import DEFAULT_TILE, GemmTile, up_gelu_quantise  # noqa: E402
from kernels.fp8_quant import quantise_blocks_torch, quantise_rows, quantise_rows_torch  # noqa: E402
from scripts import kernel_report  # noqa: E402
from upscaler.models.fp8 import (FP8BlockLinear, FP8Linear, QuantisedBlocks, QuantisedRows,  # noqa: E402
                                 block_scaled_mm_layout, feed_forward_fp8)

DIM, FFN_DIM = 1536, 8960
CASES = {"4k": 65280, "1080p": 16320}  # tokens of one steady block step: 2 latent frames of 136x240 / 68x120 patches
TILES = [
    DEFAULT_TILE,
    GemmTile(128, 128, 8, 4, 4),
    GemmTile(128, 128, 8, 8, 3),
    GemmTile(256, 128, 8, 8, 3),
    GemmTile(128, 64, 8, 4, 6),
    GemmTile(64, 128, 8, 4, 4),
    GemmTile(128, 128, 16, 8, 4),
    GemmTile(128, 128, 8, 8, 4, programs_per_sm=1),   # persistent: the next tile's loads during the epilogue
    GemmTile(128, 128, 8, 8, 3, programs_per_sm=1),
    GemmTile(128, 128, 8, 4, 3, programs_per_sm=2),
    GemmTile(256, 128, 8, 8, 3, programs_per_sm=1),
]


def _ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200)


def main() -> None:
    args = kernel_report.arguments(__doc__, CASES)
    layout = block_scaled_mm_layout(torch.device("cuda"))
    if layout is None:
        print("torch._scaled_mm with block scales does not run here (the log says why): nothing to compare")
        sys.exit(2)
    gen = torch.Generator(device="cuda").manual_seed(0)
    up, down = nn.Linear(DIM, FFN_DIM, device="cuda"), nn.Linear(FFN_DIM, DIM, device="cuda")
    with torch.no_grad():
        for layer in (up, down):
            weight = torch.randn(layer.weight.shape, generator=gen, device="cuda")
            layer.weight.copy_(weight * layer.in_features ** -0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, device="cuda") * 0.1)
    up, down = up.to(torch.bfloat16), down.to(torch.bfloat16)
    up8 = FP8Linear(up, use_scaled_mm=True, fast_accum=True)
    down8 = FP8Linear(down, use_scaled_mm=True, fast_accum=True)
    down_blocks = FP8BlockLinear(down, use_scaled_mm=True, layout=layout)
    rows = []
    for case in args.cases.split(","):
        tokens = CASES[case]
        x = torch.randn((tokens, DIM), generator=gen, device="cuda").to(torch.bfloat16)  # a layer norm's output
        x_rows = QuantisedRows(*quantise_rows_torch(x))
        reference = F.linear(F.gelu(F.linear(x.float(), up.weight.float(), up.bias.float()), approximate="tanh"),
                             down.weight.float(), down.bias.float())

        def bf16_ffn() -> torch.Tensor:
            return down(torch._addmm_activation(up.bias, x, up.weight.t(), use_gelu=True))

        hidden = up8(x_rows)
        hidden_rows = QuantisedRows(*quantise_rows(hidden, gelu=True))
        blocks = up8.gelu_blocks(x_rows)
        row = {"case": case, "tokens": tokens,
               "bf16_ms": _ms(bf16_ffn), "bf16_rel_error": kernel_report.relative_error(bf16_ffn(), reference),
               "rowwise": {"up_ms": _ms(lambda: up8(x_rows)),
                           "gelu_quantise_ms": _ms(lambda: quantise_rows(hidden, gelu=True)),
                           "down_ms": _ms(lambda: down8(hidden_rows)),
                           "ffn_ms": _ms(lambda: feed_forward_fp8(up8, down8, x_rows)),
                           "rel_error": kernel_report.relative_error(feed_forward_fp8(up8, down8, x_rows), reference)},
               "fused": {"down_ms": _ms(lambda: down_blocks(blocks)),
                         "ffn_ms": _ms(lambda: feed_forward_fp8(up8, down_blocks, x_rows)),
                         "rel_error": kernel_report.relative_error(feed_forward_fp8(up8, down_blocks, x_rows),
                                                                   reference),
                         "up_tiles": []}}
        rowwise, fused = row["rowwise"], row["fused"]
        # the other weight recipe cuBLAS takes on sm_90: one scale per output channel and 128 inputs (1x128)
        w_blocks, w_block_scale = quantise_blocks_torch(down.weight)

        def down_1x128_weight() -> torch.Tensor:
            return torch._scaled_mm(blocks.data, w_blocks.t(), scale_a=blocks.scale, scale_b=w_block_scale.t(),
                                    bias=down.bias, out_dtype=torch.bfloat16)

        try:
            fused["down_1x128_weight_rel_error"] = kernel_report.relative_error(down_1x128_weight(), reference)
            fused["down_1x128_weight_ms"] = _ms(down_1x128_weight)
        except RuntimeError as exc:
            fused["down_1x128_weight_ms"] = str(exc).splitlines()[0][:300]
        print(f"{case} ({tokens} tokens): bf16 FFN {row['bf16_ms']:.3f} ms (rel. error {row['bf16_rel_error']:.2e}); "
              f"rowwise FP8 {rowwise['ffn_ms']:.3f} = up {rowwise['up_ms']:.3f} + GELU/quantise "
              f"{rowwise['gelu_quantise_ms']:.3f} + down {rowwise['down_ms']:.3f} (rel. error "
              f"{rowwise['rel_error']:.2e}); ffn_fused {fused['ffn_ms']:.3f} with the default tile, block-scaled down "
              f"{fused['down_ms']:.3f} (with 1x128 weight blocks: {fused['down_1x128_weight_ms']}) (rel. error "
              f"{fused['rel_error']:.2e})", flush=True)
        a, a_scale = x_rows.data, x_rows.scale.reshape(-1)
        for tile in TILES:
            try:
                q, scale = up_gelu_quantise(a, a_scale, up8.weight, up8.weight_scale, up8.bias, tile=tile)
                error = kernel_report.relative_error(down_blocks(QuantisedBlocks(q, scale)), reference)
                up_ms = _ms(lambda: up_gelu_quantise(a, a_scale, up8.weight, up8.weight_scale, up8.bias, tile=tile))
            except Exception as exc:  # a tile that does not fit shared memory or registers on this GPU
                print(f"  {tile}: failed {str(exc).splitlines()[0][:120]}", flush=True)
                fused["up_tiles"].append({"tile": asdict(tile), "error": str(exc).splitlines()[0][:300]})
                continue
            flops = 2 * tokens * DIM * FFN_DIM
            fused["up_tiles"].append({"tile": asdict(tile), "up_ms": up_ms, "tflops": flops / up_ms / 1e9,
                                      "rel_error": error})
            print(f"  {tile}: up + GELU + quantise {up_ms:.3f} ms ({flops / up_ms / 1e9:.0f} TFLOP/s) against "
                  f"{rowwise['up_ms'] + rowwise['gelu_quantise_ms']:.3f}; FFN rel. error {error:.2e}", flush=True)
        rows.append(row)
    kernel_report.save(args.out, rows)


if __name__ == "__main__":
    main()
