"""Benchmark the TCDecoder's last conv (3x3, 128 channels to 3) on a CUDA GPU at its 4K and 1080p shapes:
cuDNN with the output channels padded to 8 (the decoder's path off the kernel) against
:mod:`kernels.output_conv` for each candidate tile, with each result's relative error against an fp32
conv (TF32 off). Inputs are ReLU outputs, as in the decoder. Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_output_conv.py --out $OUT/output_conv.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton.testing import do_bench  # noqa: E402

from kernels.output_conv import DEFAULT_TILE, OutputConvTile, output_conv, pack_output_taps  # noqa: E402
from scripts import kernel_report  # noqa: E402

# name: (frames, channels, rows, columns)
CASES = {"output-4k": (2, 128, 2176, 3840), "output-1080p": (4, 128, 1088, 1920)}
TILES = [DEFAULT_TILE] + [OutputConvTile(*t) for t in [(32, 64, 4, 1), (16, 64, 4, 1), (64, 128, 4, 1)]]
PADDED = 8


def main() -> None:
    args = kernel_report.arguments(__doc__, CASES)
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name in args.cases.split(","):
        frames, channels, h, w = CASES[name]
        x = kernel_report.relu_frames(gen, frames, channels, h, w)
        weight = torch.randn((3, channels, 3, 3), generator=gen, device="cuda") / (9 * channels) ** 0.5
        weight = weight.to(torch.bfloat16)
        bias = torch.randn(3, generator=gen, device="cuda").to(torch.bfloat16)
        padded = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, PADDED - 3)).contiguous(memory_format=torch.channels_last)
        padded_bias = F.pad(bias, (0, PADDED - 3))
        packed = pack_output_taps(weight)
        reference = F.conv2d(x.float(), weight.float(), bias.float(), padding=1)

        def before() -> torch.Tensor:
            return F.conv2d(x, padded, padded_bias, padding=1)[:, :3]

        before_ms = do_bench(before, warmup=10, rep=100) / frames
        row = {"case": name, "frames": frames, "before_ms_per_frame": before_ms,
               "before_rel_error": kernel_report.relative_error(before(), reference)}
        print(f"{name}: cuDNN padded to {PADDED} {before_ms:.3f} ms/frame (rel. error {row['before_rel_error']:.2e})",
              flush=True)
        row["kernel"] = kernel_report.time_tiles(lambda tile: output_conv(x, packed, bias, 3, tile=tile), TILES,
                                                 reference, frames, before_ms)
        rows.append(row)
        del x, reference
        torch.cuda.empty_cache()
    kernel_report.save(args.out, rows)


if __name__ == "__main__":
    main()
