"""Benchmark two of the TCDecoder's convs on a CUDA GPU against what the decoder ran before, for each
candidate tile, with each result's relative error against an fp32 conv (TF32 off):

- the last conv (3x3, 128 channels to 3) at 4K and 1080p: cuDNN with the output channels zero-padded to
  8 against :mod:`kernels.narrow_conv`;
- the conv of each 2x upsampled stage (3x3 on the nearest-upsampled image) at 4K: cuDNN's 2x2 conv to
  four phases plus the Triton interleave (:mod:`upscaler.models.upsampled_conv`) against
  :mod:`kernels.subpixel_conv`, which writes the upsampled output itself;
- a MemBlock's first conv (3x3 over each frame and the one before it, bias, ReLU) at each stage at 4K: the
  stacked copy (:mod:`kernels.frame_pairs`) plus cuDNN's fused conv against :mod:`kernels.pair_conv`.

Inputs are ReLU outputs, as in the decoder. Prints a table; ``--out`` gets JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_decoder_convs.py --out $OUT/decoder_convs.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton.testing import do_bench  # noqa: E402

from kernels.narrow_conv import DEFAULT_TILE as NARROW_DEFAULT  # noqa: E402
from kernels.frame_pairs import stack_with_previous  # noqa: E402
from kernels.narrow_conv import NarrowTile, narrow_conv, pack_taps  # noqa: E402
from kernels.pair_conv import DEFAULT_TILE as PAIR_DEFAULT  # noqa: E402
from kernels.pair_conv import PairTile, pack_pair_taps, pair_conv  # noqa: E402
from kernels.subpixel import interleave_phases_triton  # noqa: E402
from kernels.subpixel_conv import DEFAULT_TILE as SUBPIXEL_DEFAULT  # noqa: E402
from kernels.subpixel_conv import SubpixelTile, pack_phase_taps, subpixel_conv  # noqa: E402
from upscaler.models.upsampled_conv import phase_weight  # noqa: E402

OUTPUTS = 3
CUDNN_PADDED = 8
# name: (frames, input channels, output channels, input rows, input columns, ReLU after)
NARROW_CASES = {"output-4k": (2, 128, OUTPUTS, 2176, 3840, False), "output-1080p": (4, 128, OUTPUTS, 1088, 1920, False)}
SUBPIXEL_CASES = {
    "upsample3-4k": (2, 128, 128, 1088, 1920, True),
    "upsample2-4k": (4, 256, 128, 544, 960, False),
    "upsample1-4k": (4, 512, 256, 272, 480, False),
}
PAIR_CASES = {  # frames per call as the decoder's groups at 4K; input channels = 2 x the frames' channels
    "pair2-4k": (2, 256, 128, 1088, 1920, True),
    "pair1-4k": (2, 512, 256, 544, 960, True),
    "pair0-4k": (2, 1024, 512, 272, 480, True),
}
NARROW_TILES = [NARROW_DEFAULT] + [
    NarrowTile(*t) for t in [(1, 64, 4, 1), (1, 256, 8, 1), (2, 64, 4, 1)]
]
SUBPIXEL_TILES = [SUBPIXEL_DEFAULT] + [
    SubpixelTile(*t) for t in [(1, 128, 128, 64, 4, 3), (1, 128, 256, 64, 8, 3), (1, 256, 128, 64, 8, 3)]
]

PAIR_TILES = [PAIR_DEFAULT] + [
    PairTile(*t) for t in [(1, 128, 128, 64, 4, 3), (1, 128, 256, 64, 8, 3), (1, 256, 128, 64, 8, 3)]
]


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.float() - reference).norm() / reference.norm())


def _sweep(name: str, frames: int, baseline: Callable[[], torch.Tensor], reference: torch.Tensor,
           tiles: list, run: Callable[[object], torch.Tensor]) -> dict:
    """Time ``baseline`` and ``run(tile)`` for every tile (ms per frame) and their errors against ``reference``."""
    base_ms = do_bench(baseline, warmup=10, rep=100) / frames
    row = {"case": name, "frames": frames, "baseline_ms_per_frame": base_ms,
           "baseline_rel_error": _relative_error(baseline(), reference), "kernel": []}
    print(f"{name}: before {base_ms:.3f} ms/frame (rel. error {row['baseline_rel_error']:.2e})", flush=True)
    for tile in tiles:
        try:
            error = _relative_error(run(tile), reference)
            ms = do_bench(lambda: run(tile), warmup=10, rep=100) / frames
        except Exception as exc:  # a tile that does not fit registers or shared memory on this GPU
            print(f"  {tile}: failed {str(exc).splitlines()[0][:120]}", flush=True)
            row["kernel"].append({"tile": asdict(tile), "error": str(exc).splitlines()[0][:300]})
            continue
        row["kernel"].append({"tile": asdict(tile), "ms_per_frame": ms, "rel_error": error})
        print(f"  {tile}: {ms:.3f} ms/frame ({base_ms / ms:.2f}x) rel. error {error:.2e}", flush=True)
    return row


def _inputs(frames: int, c_in: int, c_out: int, h: int, w: int, gen: torch.Generator):
    x = torch.randn((frames, c_in, h, w), generator=gen, device="cuda").relu_()
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn((c_out, c_in, 3, 3), generator=gen, device="cuda") / (9 * c_in) ** 0.5).to(torch.bfloat16)
    return x, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cases = {**NARROW_CASES, **SUBPIXEL_CASES, **PAIR_CASES}
    parser.add_argument("--cases", default=",".join(cases), help="comma-separated names from: " + ", ".join(cases))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name in args.cases.split(","):
        frames, c_in, c_out, h, w, relu = cases[name]
        x, weight = _inputs(frames, c_in, c_out, h, w, gen)
        if name in NARROW_CASES:
            bias = (torch.randn(c_out, generator=gen, device="cuda") * 0.1).to(torch.bfloat16)
            padded_w = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, CUDNN_PADDED - c_out)).contiguous(memory_format=torch.channels_last)
            padded_b = F.pad(bias, (0, CUDNN_PADDED - c_out))
            packed = pack_taps(weight)
            reference = F.conv2d(x.float(), weight.float(), bias.float(), padding=1)
            rows.append(_sweep(name, frames, lambda: F.conv2d(x, padded_w, padded_b, padding=1)[:, :c_out], reference,
                               NARROW_TILES, lambda tile: narrow_conv(x, packed, bias, c_out, tile=tile)))
        elif name in PAIR_CASES:
            frames_x = x[:, : c_in // 2].contiguous(memory_format=torch.channels_last)
            past = x[:1, c_in // 2 :].contiguous(memory_format=torch.channels_last)
            bias = (torch.randn(c_out, generator=gen, device="cuda") * 0.1).to(torch.bfloat16)
            w_cl = weight.contiguous(memory_format=torch.channels_last)
            packed = pack_pair_taps(weight)
            stacked = stack_with_previous(frames_x, past, 1)
            reference = F.conv2d(stacked.float(), weight.float(), bias.float(), padding=1).relu_()
            del stacked

            def before() -> torch.Tensor:
                pairs = stack_with_previous(frames_x, past, 1)
                return torch.ops.aten.cudnn_convolution_relu(pairs, w_cl, bias, [1, 1], [1, 1], [1, 1], 1)

            rows.append(_sweep(name, frames, before, reference, PAIR_TILES,
                               lambda tile: pair_conv(frames_x, past, 1, packed, bias, tile=tile)))
        else:
            phases = phase_weight(weight).contiguous(memory_format=torch.channels_last)
            packed = pack_phase_taps(phase_weight(weight))
            reference = F.conv2d(F.interpolate(x.float(), scale_factor=2), weight.float(), None, padding=1)
            if relu:
                reference = reference.relu_()

            def before() -> torch.Tensor:
                return interleave_phases_triton(F.conv2d(x, phases, None, padding=1), h, w, relu=relu)

            rows.append(_sweep(name, frames, before, reference, SUBPIXEL_TILES,
                               lambda tile: subpixel_conv(x, packed, None, relu=relu, tile=tile)))
        del x, reference
        torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
