"""Benchmark the TCDecoder's upsampled convs (3x3 on the 2x nearest-upsampled image) on a CUDA GPU at the
three stages' 4K shapes: cuDNN's 2x2 conv to four phases plus the Triton interleave (the path before, and
the one off CUDA layouts) against :mod:`kernels.subpixel_conv`, which writes the upsampled output itself,
for each candidate tile, with each result's relative error against an fp32 conv of the upsampled image
(TF32 off). Inputs are ReLU outputs, as in the decoder. Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_subpixel_conv.py --out $OUT/subpixel_conv.json
"""

from __future__ import annotations

import sys
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


def main() -> None:
    args = kernel_report.arguments(__doc__, CASES)
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name in args.cases.split(","):
        frames, c_in, c_out, h, w, relu = CASES[name]
        x = kernel_report.relu_frames(gen, frames, c_in, h, w)
        weight = (torch.randn((c_out, c_in, 3, 3), generator=gen, device="cuda") / (9 * c_in) ** 0.5).to(torch.bfloat16)
        phases = phase_weight(weight)
        packed = pack_phase_taps(phases)
        phases = phases.contiguous(memory_format=torch.channels_last)
        reference = F.conv2d(F.interpolate(x.float(), scale_factor=2), weight.float(), None, padding=1)
        if relu:
            reference = reference.relu_()

        def before() -> torch.Tensor:
            return interleave_phases_triton(F.conv2d(x, phases, None, padding=1), h, w, relu=relu)

        before_ms = do_bench(before, warmup=10, rep=100) / frames
        row = {"case": name, "frames": frames, "before_ms_per_frame": before_ms,
               "before_rel_error": kernel_report.relative_error(before(), reference)}
        print(f"{name}: before {before_ms:.3f} ms/frame (rel. error {row['before_rel_error']:.2e})", flush=True)
        row["kernel"] = kernel_report.time_tiles(lambda tile: subpixel_conv(x, packed, None, relu=relu, tile=tile),
                                                 TILES, reference, frames, before_ms)
        rows.append(row)
        del x, reference
        torch.cuda.empty_cache()
    kernel_report.save(args.out, rows)


if __name__ == "__main__":
    main()
