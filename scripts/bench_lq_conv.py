"""Benchmark the LQ projection's two causal convs (as 2D convs over stacked time taps) on a CUDA GPU:
cuDNN in bf16 (what ``precision = "bf16"`` runs) against the FP8 implicit-GEMM kernel
(:mod:`kernels.fp8_conv`) for each candidate tile, at FlashVSR's 4K and 1080p shapes, with the FP8
result's relative error against the bf16 conv over inputs shaped like the real ones (frames in [-1, 1]
for the first conv; the channel-normalised SiLU output for the second). Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_lq_conv.py --out $OUT/lq_conv.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton.testing import do_bench  # noqa: E402

from kernels.fp8_conv import ConvTile, conv3x3_fp8  # noqa: E402
from kernels.fp8_quant import quantise_static_torch  # noqa: E402
from scripts import kernel_report  # noqa: E402
from upscaler.models.lq_proj_fp8 import quantise_conv_weight, stacked_input_scales  # noqa: E402

TAPS = 4  # time taps stacked along the input channels

# (name, frames, stacked input channels, output channels, latent rows, latent columns)
CASES = {
    "4k-conv1": (2, 4 * 768, 2048, 136, 240),
    "4k-conv2": (1, 4 * 2048, 3072, 136, 240),
    "1080p-conv1": (2, 4 * 768, 2048, 68, 120),
    "1080p-conv2": (1, 4 * 2048, 3072, 68, 120),
}
TILES = [
    ConvTile(128, 256, 128, 8, 8, 4),
    ConvTile(128, 256, 128, 8, 8, 3),
    ConvTile(128, 128, 128, 8, 4, 4),
    ConvTile(128, 128, 128, 8, 8, 5),
    ConvTile(256, 128, 128, 8, 8, 4),
    ConvTile(128, 256, 64, 8, 8, 6),
]


def _inputs(case: str, frames: int, channels: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A padded channels-last bf16 input ``(F, C, h + 2, w + 2)`` distributed like the real one."""
    shape = (frames, h + 2, w + 2, TAPS, channels // TAPS)
    if case.endswith("conv1"):
        x = torch.rand(shape, generator=gen, device="cuda") * 2 - 1
    else:  # each tap is one pixel's channels, normalised, gain 1
        x = F.silu(F.normalize(torch.randn(shape, generator=gen, device="cuda"), dim=-1) * (channels // TAPS) ** 0.5)
    return x.flatten(3).to(torch.bfloat16).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names from: " + ", ".join(CASES))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for case in args.cases.split(","):
        frames, channels, n, h, w = CASES[case]
        x = _inputs(case, frames, channels, h, w, gen)
        weight = torch.randn((n, channels, 3, 3), generator=gen, device="cuda") / (9 * channels) ** 0.5
        weight = weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        flops = 2 * frames * h * w * n * 9 * channels
        reference = F.conv2d(x, weight)
        bf16_ms = do_bench(lambda: F.conv2d(x, weight), warmup=50, rep=300)
        row = {"case": case, "frames": frames, "in_channels": channels, "out_channels": n, "h": h, "w": w,
               "cudnn_bf16_ms": bf16_ms, "cudnn_bf16_tflops": flops / bf16_ms / 1e9, "fp8": []}
        gamma = None if case.endswith("conv1") else torch.ones(channels // TAPS)
        in_scale = stacked_input_scales(TAPS, channels // TAPS, gamma, "cuda")
        xq = quantise_static_torch(x, (1.0 / in_scale).view(1, -1, 1, 1))  # as the stacking pass does
        wq, w_scale = quantise_conv_weight(weight, in_scale)
        print(f"{case}: cuDNN bf16 {bf16_ms:.3f} ms ({row['cudnn_bf16_tflops']:.0f} TFLOP/s)", flush=True)
        for tile in TILES:
            try:
                out = conv3x3_fp8(xq, wq, w_scale, tile=tile)
                ms = do_bench(lambda: conv3x3_fp8(xq, wq, w_scale, tile=tile), warmup=50, rep=300)
            except Exception as exc:  # a tile that does not fit shared memory or registers on this GPU
                print(f"  {tile}: failed {str(exc).splitlines()[0][:120]}", flush=True)
                row["fp8"].append({"tile": asdict(tile), "error": str(exc).splitlines()[0][:300]})
                continue
            error = float((out.float() - reference.float()).norm() / reference.float().norm())
            row["fp8"].append({"tile": asdict(tile), "ms": ms, "tflops": flops / ms / 1e9, "rel_error": error})
            print(f"  {tile}: {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s, {bf16_ms / ms:.2f}x) "
                  f"rel. error {error:.2e}", flush=True)
        rows.append(row)
    kernel_report.save(args.out, rows)


if __name__ == "__main__":
    main()
