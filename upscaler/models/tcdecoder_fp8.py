"""FP8 for the TCDecoder's full-resolution stage (``fp8_layers`` group ``decoder_full_res``).

The decoder's last stage runs at the output resolution: the sub-pixel conv (entry 22, C -> C, ReLU), the
deepening conv (24, C -> C, ReLU) and the output conv (26, C -> 3). On an H100 at 4K the deepening conv
took 3.60 ms per frame in bf16, compute-bound at 685 TFLOP/s. In FP8:

* the sub-pixel conv (:mod:`kernels.subpixel_conv`) writes e4m3 straight into a zero-bordered buffer, the
  padding the FP8 conv reads, at half the bytes of its bf16 output;
* the deepening conv runs as the FP8 implicit GEMM (:mod:`kernels.fp8_conv`) and writes e4m3 after its ReLU;
* the output conv (:mod:`kernels.output_conv`) reads that e4m3 input, widened as it is loaded.

Both e4m3 activations are ReLU outputs with no static bound, so their scales are **delayed**: one per
channel, from the running maximum of that channel over the stream so far (each producing kernel records the
maxima of what it writes), times :data:`HEADROOM`; a value beyond that saturates to e4m3's largest. The
first call of a stream runs the bf16 path and measures the maxima, so no scale is guessed. Each input's
scales fold into the weights of the conv that reads it (re-quantised per call, a few small ops on 1.2 MB of
weights). Without the kernels (the CPU, GPUs without FP8 tensor cores) the same roundings are emulated.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kernels.fp8_conv import ConvTile
from kernels.fp8_quant import AMAX_FLOOR, E4M3, E4M3_MAX, ChannelQuantisation, quantise_static_torch
from upscaler.models.conv_fusion import conv_relu
from upscaler.models.lq_proj_fp8 import emulated_conv3x3_fp8, quantise_conv_weight
from upscaler.models.upsampled_conv import UpsampledConv

log = logging.getLogger(__name__)

HEADROOM = 4.0
"""A channel's scale covers this many times the largest value it has had in the stream so far."""
QUIET_CHANNEL_FLOOR = 2.0**-6
"""A channel's range is at least this fraction of the widest channel's (one all but silent so far still has room)."""
CONV_INPUT, OUTPUT_INPUT = "full_res_conv_input", "output_conv_input"
CONV_TILE = ConvTile(block_m=128, block_n=128, block_k=128, group_m=8, warps=4, stages=3)
"""The FP8 conv's tile at this stage's shape (128 to 128 channels, a 1,152-long reduction): two programs per SM."""
FP8_MIN_CAPABILITY = (8, 9)


def channel_amax(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``(C,)``: the largest magnitude of each channel of ``x (F, C, H, W)``."""
    return x.abs().amax(dim=(0, 2, 3)).float()


def channel_scales(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, inverse)`` fp32 ``(C,)`` from running maxima (new tensors: the kernels then update ``amax``)."""
    floor = torch.maximum(amax, amax.amax() * QUIET_CHANNEL_FLOOR).clamp_min(AMAX_FLOOR)
    scale = floor * (HEADROOM / E4M3_MAX)
    return scale, torch.reciprocal(scale)


def _quantise_recording(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """e4m3 of ``x (F, C, H, W)`` with the delayed scales of ``amax``, which then takes ``x``'s maxima in."""
    _, inverse = channel_scales(amax)
    q = quantise_static_torch(x, inverse.view(1, -1, 1, 1))
    torch.maximum(amax, channel_amax(x), out=amax)
    return q


class FP8FullResolutionStage:
    """Entries 22, 24 and 26 of a :class:`~upscaler.models.tcdecoder.TCDecoder` with e4m3 activations between
    them (see the module docstring). Holds the decoder's own layers (their weights stay in the model dtype and
    in its ``state_dict``) and no state: the running maxima live in each stream's decoder state."""

    def __init__(self, upsampled: UpsampledConv, conv: nn.Conv2d, output: nn.Conv2d, *, use_kernels: bool) -> None:
        self.upsampled, self.conv, self.output = upsampled, conv, output
        self.use_kernels = use_kernels

    def __call__(self, x: torch.Tensor, amax: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(F, 3, 2H, 2W)`` from the stage's input ``x (F, C, H, W)``; ``amax`` holds the stream's running
        maxima by name (filled by the first call, which runs in the model dtype, and updated by every call)."""
        if not amax:
            return self._measuring(x, amax)
        if self.use_kernels and x.is_cuda and self._kernels_take(x):
            return self._kernels(x, amax)
        return self._emulated(x, amax)

    def _measuring(self, x: torch.Tensor, amax: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model-dtype stage, recording the maxima the next call's scales start from."""
        h = self.upsampled(x, relu=True)
        amax[CONV_INPUT] = channel_amax(h)
        h = conv_relu(h, self.conv)
        amax[OUTPUT_INPUT] = channel_amax(h)
        return self.output(h)

    def _kernels_take(self, x: torch.Tensor) -> bool:
        from kernels import fp8_conv, output_conv

        frames, c, h, w = x.shape
        padded = torch.empty((frames, c, 2 * h + 2, 2 * w + 2), dtype=E4M3, device="meta",
                             memory_format=torch.channels_last)
        weight = torch.empty((self.conv.out_channels, 9 * c), dtype=E4M3, device="meta")
        conv_out = torch.empty((frames, self.conv.out_channels, 2 * h, 2 * w), dtype=E4M3, device="meta",
                               memory_format=torch.channels_last)
        return (x.dtype in (torch.float16, torch.bfloat16) and self.upsampled.takes_kernel(x, padded[:, :, 1:-1, 1:-1])
                and fp8_conv.supported(padded, weight, CONV_TILE) and output_conv.supported(conv_out))

    def _kernels(self, x: torch.Tensor, amax: dict[str, torch.Tensor]) -> torch.Tensor:
        from kernels.fp8_conv import conv3x3_fp8
        from kernels.output_conv import output_conv, pack_output_taps

        frames, c, h, w = x.shape
        conv_scale, conv_inverse = channel_scales(amax[CONV_INPUT])
        padded = torch.empty((frames, c, 2 * h + 2, 2 * w + 2), dtype=E4M3, device=x.device,
                             memory_format=torch.channels_last)
        for border in (padded[:, :, 0], padded[:, :, -1], padded[:, :, :, 0], padded[:, :, :, -1]):
            border.zero_()
        self.upsampled(x, relu=True, out=padded[:, :, 1:-1, 1:-1],
                       quantise=ChannelQuantisation(conv_inverse, amax[CONV_INPUT]))
        weight, weight_scale = quantise_conv_weight(self.conv.weight, conv_scale)
        output_scale, output_inverse = channel_scales(amax[OUTPUT_INPUT])
        h_q = conv3x3_fp8(padded, weight, weight_scale, self.conv.bias, relu=True, tile=CONV_TILE,
                          quantise=ChannelQuantisation(output_inverse, amax[OUTPUT_INPUT]))
        taps = pack_output_taps(self._folded_output_weight(output_scale))
        return output_conv(h_q, taps, self.output.bias, self.output.out_channels)

    def _emulated(self, x: torch.Tensor, amax: dict[str, torch.Tensor]) -> torch.Tensor:
        """The kernels' roundings in PyTorch: e4m3 activations, fp32 products, model-dtype output."""
        conv_scale, _ = channel_scales(amax[CONV_INPUT])
        h_q = _quantise_recording(self.upsampled(x, relu=True), amax[CONV_INPUT])
        weight, weight_scale = quantise_conv_weight(self.conv.weight, conv_scale)
        bias = None if self.conv.bias is None else self.conv.bias.float()
        h = emulated_conv3x3_fp8(F.pad(h_q.float(), (1, 1, 1, 1)), weight, weight_scale, bias).relu_()
        output_scale, _ = channel_scales(amax[OUTPUT_INPUT])
        h_q = _quantise_recording(h, amax[OUTPUT_INPUT])
        bias = None if self.output.bias is None else self.output.bias.float()
        out = F.conv2d(h_q.float(), self._folded_output_weight(output_scale).float(), bias, padding=1)
        return out.to(self.output.weight.dtype)

    def _folded_output_weight(self, input_scale: torch.Tensor) -> torch.Tensor:
        """The output conv's weight times its e4m3 input's scales, in the model dtype."""
        weight = self.output.weight
        return (weight.detach().float() * input_scale.view(1, -1, 1, 1)).to(weight.dtype)


def convert_decoder_full_resolution(decoder: nn.Module) -> bool:
    """Give a :class:`~upscaler.models.tcdecoder.TCDecoder` an :class:`FP8FullResolutionStage`; logs which path
    runs. Returns False (and changes nothing) for another decoder (the Wan VAE keeps its precision)."""
    from upscaler.models.tcdecoder import TCDecoder

    if not isinstance(decoder, TCDecoder):
        return False
    device = decoder.decoder[22].weight.device
    use_kernels = device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY
    layers = decoder.full_resolution_layers()
    decoder.fp8_full_resolution = FP8FullResolutionStage(*layers, use_kernels=use_kernels)
    log.info("tcdecoder fp8 full-resolution convs path=%s headroom=%.0fx",
             "FP8 kernels (sub-pixel conv, implicit GEMM, output conv)" if use_kernels
             else "emulated (same roundings, not faster)", HEADROOM)
    return True
