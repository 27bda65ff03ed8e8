"""Benchmark the TCDecoder's full-resolution stage (sub-pixel conv + ReLU, 3x3 conv + ReLU, output conv) on a
CUDA GPU at its 4K and 1080p shapes: the bf16 stage against the FP8 one
(:mod:`upscaler.models.tcdecoder_fp8`), whole and by kernel, with the FP8 conv's candidate tiles; each
output's relative error against the fp32 stage (TF32 off). Weights are random with the variance that keeps
activations at the input's scale; inputs are ReLU outputs, as in the decoder. Prints a table; ``--out`` gets
JSON.

    PYTHONUNBUFFERED=1 python scripts/bench_decoder_fp8.py --out $OUT/decoder_fp8.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from triton.testing import do_bench  # noqa: E402

from kernels.fp8_conv import DEFAULT_TILE, ConvTile, conv3x3_fp8  # noqa: E402
from kernels.fp8_quant import E4M3, ChannelQuantisation  # noqa: E402
from scripts import kernel_report  # noqa: E402
from upscaler.models.conv_fusion import conv_relu  # noqa: E402
from upscaler.models.lq_proj_fp8 import quantise_conv_weight  # noqa: E402
from upscaler.models.tcdecoder import OutputConv  # noqa: E402
from upscaler.models.tcdecoder_fp8 import CONV_INPUT, CONV_TILE, FP8FullResolutionStage, channel_scales  # noqa: E402
from upscaler.models.upsampled_conv import UpsampledConv  # noqa: E402

# name: (frames, channels, input rows, input columns); the output is twice as high and wide
CASES = {"stage-4k": (2, 128, 1088, 1920), "stage-1080p": (4, 128, 544, 960)}
TILES = [CONV_TILE, DEFAULT_TILE] + [ConvTile(*t) for t in [(256, 128, 128, 8, 8, 2), (128, 128, 64, 8, 4, 4),
                                                             (128, 128, 128, 8, 8, 3), (64, 128, 128, 8, 4, 3)]]


def _layers(channels: int) -> tuple[UpsampledConv, nn.Conv2d, OutputConv]:
    upsampled, conv = UpsampledConv(channels, channels, bias=False), nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    output = OutputConv(channels, 3)
    for layer in (upsampled, conv, output):
        nn.init.normal_(layer.weight, std=(2 / (9 * channels)) ** 0.5)
    return tuple(layer.to("cuda", torch.bfloat16).eval() for layer in (upsampled, conv, output))  # type: ignore[return-value]


def main() -> None:
    args = kernel_report.arguments(__doc__, CASES)
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name in args.cases.split(","):
        frames, channels, h, w = CASES[name]
        upsampled, conv, output = _layers(channels)
        x = kernel_report.relu_frames(gen, frames, channels, h, w)
        with torch.inference_mode():
            reference = F.conv2d(F.interpolate(x.float(), scale_factor=2), upsampled.weight.float(), padding=1).relu_()
            reference = F.conv2d(reference, conv.weight.float(), padding=1).relu_()
            reference = F.conv2d(reference, output.weight.float(), output.bias.float(), padding=1)
            stage = FP8FullResolutionStage(upsampled, conv, output, use_kernels=True)
            amax: dict[str, torch.Tensor] = {}

            def bf16() -> torch.Tensor:
                return output(conv_relu(upsampled(x, relu=True), conv))

            bf16_ms = do_bench(bf16, warmup=5, rep=50) / frames
            stage(x, amax)  # the measuring call
            fp8_ms = do_bench(lambda: stage(x, amax), warmup=5, rep=50) / frames
            row = {"case": name, "frames": frames, "bf16_ms_per_frame": bf16_ms, "fp8_ms_per_frame": fp8_ms,
                   "bf16_rel_error": kernel_report.relative_error(bf16(), reference),
                   "fp8_rel_error": kernel_report.relative_error(stage(x, amax), reference)}
            parts = {"bf16 sub-pixel conv": lambda: upsampled(x, relu=True)}
            hidden = upsampled(x, relu=True)
            parts["bf16 3x3 conv"] = lambda: conv_relu(hidden, conv)
            parts["bf16 output conv"] = lambda: output(hidden)
            scale, inverse = channel_scales(amax[CONV_INPUT])
            padded = torch.empty((frames, channels, 2 * h + 2, 2 * w + 2), dtype=E4M3, device="cuda",
                                 memory_format=torch.channels_last)
            padded.view(torch.uint8).zero_()
            spare = amax[CONV_INPUT].clone()
            parts["fp8 sub-pixel conv to e4m3"] = lambda: upsampled(
                x, relu=True, out=padded[:, :, 1:-1, 1:-1], quantise=ChannelQuantisation(inverse, spare))
            weight, weight_scale = quantise_conv_weight(conv.weight, scale)
            parts["fp8 3x3 conv to e4m3"] = lambda: conv3x3_fp8(
                padded, weight, weight_scale, relu=True, tile=CONV_TILE, quantise=ChannelQuantisation(inverse, spare))
            row["parts_ms_per_frame"] = {}
            for part, run in parts.items():
                row["parts_ms_per_frame"][part] = do_bench(run, warmup=5, rep=50) / frames
            print(f"{name}: bf16 stage {bf16_ms:.3f} ms/frame (rel. error {row['bf16_rel_error']:.2e}), fp8 stage "
                  f"{fp8_ms:.3f} ({bf16_ms / fp8_ms:.2f}x, rel. error {row['fp8_rel_error']:.2e}); parts "
                  + ", ".join(f"{k} {v:.3f}" for k, v in row["parts_ms_per_frame"].items()), flush=True)
            def conv_tile(tile: ConvTile) -> torch.Tensor:
                return conv3x3_fp8(padded, weight, weight_scale, relu=True, tile=tile,
                                   quantise=ChannelQuantisation(inverse, spare))

            conv_reference = conv_tile(CONV_TILE).float()
            row["fp8_conv_tiles"] = kernel_report.time_tiles(
                conv_tile, TILES, conv_reference, frames, row["parts_ms_per_frame"]["fp8 3x3 conv to e4m3"])
        rows.append(row)
        del x, reference, hidden, padded, conv_reference
        torch.cuda.empty_cache()
    kernel_report.save(args.out, rows)


if __name__ == "__main__":
    main()
