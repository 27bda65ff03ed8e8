"""Benchmark the TCDecoder's upsampled convs (3x3 on the 2x nearest-upsampled image) on a CUDA GPU at the
three stages' 4K shapes: cuDNN's 2x2 conv to four phases plus the Triton interleave (the path before, and
the one off CUDA layouts) against :mod:`kernels.subpixel_conv`, which writes the upsampled output itself,
for each candidate tile, with each result's relative error against an fp32 conv of the upsampled image
(TF32 off). Inputs are ReLU outputs, as in the decoder. Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_subpixel_conv.py --out $OUT/subpixel_conv.json
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

from kernels.subpixel import interleave_phases_triton  # noqa: E402
from kernels.subpixel_conv import DEFAULT_TILE, SubpixelTile, pack_phase_taps, subpixel_conv  # noqa: E402
from scripts import kernel_report  # noqa: E402
from upscaler.models.upsampled_conv import phase_weight  # noqa: E402

# name: (frames, input channels, output channels, input rows, input columns, ReLU after)
CASES = {
    "upsample3-4k": (2, 128, 128, 1088, 1920, True),
    "upsample2-4k": (4, 256, 128, 544, 960, False),
    "upsample1-4k": (4, 512, 256, 272, 480, False),
}
TILES = [DEFAULT_TILE] + [
    SubpixelTile(*t) for t in [(1, 128, 128, 64, 4, 3), (1, 128, 256, 64, 8, 3), (1, 256, 128, 64, 8, 3)]
]


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.float() - reference).norm() / reference.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names from: " + ", ".join(CASES))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name in args.cases.split(","):
        frames, c_in, c_out, h, w, relu = CASES[name]
        x = torch.randn((frames, c_in, h, w), generator=gen, device="cuda").relu_()
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        weight = (torch.randn((c_out, c_in, 3, 3), generator=gen, device="cuda") / (9 * c_in) ** 0.5).to(torch.bfloat16)
        phases = phase_weight(weight).contiguous(memory_format=torch.channels_last)
        packed = pack_phase_taps(phase_weight(weight))
        reference = F.conv2d(F.interpolate(x.float(), scale_factor=2), weight.float(), None, padding=1)
        if relu:
            reference = reference.relu_()

        def before() -> torch.Tensor:
            return interleave_phases_triton(F.conv2d(x, phases, None, padding=1), h, w, relu=relu)

        before_ms = do_bench(before, warmup=10, rep=100) / frames
        row = {"case": name, "frames": frames, "before_ms_per_frame": before_ms,
               "before_rel_error": _relative_error(before(), reference), "kernel": []}
        print(f"{name}: before {before_ms:.3f} ms/frame (rel. error {row['before_rel_error']:.2e})", flush=True)
        for tile in TILES:
            try:
                error = _relative_error(subpixel_conv(x, packed, None, relu=relu, tile=tile), reference)
                ms = do_bench(lambda: subpixel_conv(x, packed, None, relu=relu, tile=tile), warmup=10, rep=100) / frames
            except Exception as exc:  # a tile that does not fit registers or shared memory on this GPU
                print(f"  {tile}: failed {str(exc).splitlines()[0][:120]}", flush=True)
                row["kernel"].append({"tile": asdict(tile), "error": str(exc).splitlines()[0][:300]})
                continue
            row["kernel"].append({"tile": asdict(tile), "ms_per_frame": ms, "rel_error": error})
            print(f"  {tile}: {ms:.3f} ms/frame ({before_ms / ms:.2f}x) rel. error {error:.2e}", flush=True)
        rows.append(row)
        del x, reference
        torch.cuda.empty_cache()
    kernel_report.save(args.out, rows)


if __name__ == "__main__":
    main()
