"""Benchmark the TCDecoder's last conv (3x3, 128 channels to 3) on a CUDA GPU at 4K and 1080p: cuDNN as
the decoder ran it before (output channels zero-padded to 8, channels-last) against the narrow-conv
kernel (:mod:`kernels.narrow_conv`) for each candidate tile, with each result's relative error against
an fp32 conv (TF32 off). Inputs are ReLU outputs, as in the decoder. Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_narrow_conv.py --out $OUT/narrow_conv.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton.testing import do_bench  # noqa: E402

from kernels.narrow_conv import DEFAULT_TILE, NarrowTile, narrow_conv, pack_taps  # noqa: E402

CHANNELS = 128
OUTPUTS = 3
CUDNN_PADDED = 8
CASES = {"4k": (2, 2176, 3840), "1080p": (4, 1088, 1920)}  # frames, rows, columns
TILES = [DEFAULT_TILE] + [
    NarrowTile(rows, block_x, warps, stages)
    for rows, block_x, warps, stages in [
        (1, 64, 4, 1), (1, 256, 8, 1), (1, 128, 8, 1), (1, 128, 4, 2), (1, 128, 4, 3), (1, 64, 4, 3),
        (2, 64, 4, 1), (2, 64, 4, 2), (2, 128, 8, 1), (2, 64, 8, 3), (4, 32, 4, 1), (4, 64, 8, 1), (4, 64, 8, 2),
    ]
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
    weight = (torch.randn((OUTPUTS, CHANNELS, 3, 3), generator=gen, device="cuda") / (9 * CHANNELS) ** 0.5)
    bias = torch.randn(OUTPUTS, generator=gen, device="cuda") * 0.1
    w16, b16 = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
    padded_w = F.pad(w16, (0, 0, 0, 0, 0, 0, 0, CUDNN_PADDED - OUTPUTS)).contiguous(memory_format=torch.channels_last)
    padded_b = F.pad(b16, (0, CUDNN_PADDED - OUTPUTS))
    packed = pack_taps(w16)
    rows = []
    for case in args.cases.split(","):
        frames, h, w = CASES[case]
        x = torch.randn((frames, CHANNELS, h, w), generator=gen, device="cuda").relu_()
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        reference = F.conv2d(x.float(), w16.float(), b16.float(), padding=1)

        def cudnn() -> torch.Tensor:
            return F.conv2d(x, padded_w, padded_b, padding=1)[:, :OUTPUTS]

        cudnn_ms = do_bench(cudnn, warmup=20, rep=200) / frames
        row = {"case": case, "frames": frames, "h": h, "w": w, "cudnn_padded_ms_per_frame": cudnn_ms,
               "cudnn_rel_error": _relative_error(cudnn(), reference), "kernel": []}
        input_gb = h * w * CHANNELS * 2 / 1e9
        print(f"{case}: cuDNN padded to {CUDNN_PADDED}: {cudnn_ms:.3f} ms/frame "
              f"(input {input_gb:.2f} GB/frame: {input_gb / cudnn_ms:.2f} TB/s)", flush=True)
        for tile in TILES:
            try:
                out = narrow_conv(x, packed, b16, OUTPUTS, tile=tile)
                ms = do_bench(lambda: narrow_conv(x, packed, b16, OUTPUTS, tile=tile), warmup=20, rep=200) / frames
            except Exception as exc:  # a tile that does not fit registers or shared memory on this GPU
                print(f"  {tile}: failed {str(exc).splitlines()[0][:120]}", flush=True)
                row["kernel"].append({"tile": asdict(tile), "error": str(exc).splitlines()[0][:300]})
                continue
            error = _relative_error(out, reference)
            row["kernel"].append({"tile": asdict(tile), "ms_per_frame": ms, "rel_error": error})
            print(f"  {tile}: {ms:.3f} ms/frame ({input_gb / ms:.2f} TB/s of input, {cudnn_ms / ms:.2f}x) "
                  f"rel. error {error:.2e}", flush=True)
        rows.append(row)
        del x, reference
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
