"""FP8 convs for the LQ projection (``precision = "fp8"``).

Each causal conv runs as a 2D 3x3 conv over its input's four time taps stacked along channels
(:class:`upscaler.models.lq_proj.CausalConv`). In FP8 the stacking pass writes e4m3 and the conv is one
FP8 product (:mod:`kernels.fp8_conv`). The input's scales are static, one per input channel, from a bound
the layer before guarantees, and are folded into the weight before it is quantised (one scale per output
channel), so the product needs no scale along its reduction and no pass to find the input's maxima:

* the first conv reads LQ frames in [-1, 1] (bicubic overshoot kept): bound :data:`FRAME_BOUND`;
* the second reads ``silu(normalize(v) * sqrt(C) * gamma)``: a unit vector's entries are at most 1, so
  channel ``c`` is at most ``sqrt(C) * |gamma_c|`` in magnitude (and SiLU's minimum is -0.2785).
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kernels import fp8_conv
from kernels.fp8_quant import E4M3_MAX, quantise_rows_torch
from upscaler.models.lq_proj import CausalConv, stacked_taps
from upscaler.settings import LQ_FP8_GROUPS

log = logging.getLogger(__name__)

FRAME_BOUND = 1.5  # bicubic overshoot of frames in [-1, 1] stays well inside this; beyond it values saturate
SILU_MIN_MAGNITUDE = 0.2785  # |min silu(x)| = 0.27846...


def stacked_input_scales(taps: int, channels: int, gamma: torch.Tensor | None, device: torch.device | str
                         ) -> torch.Tensor:
    """fp32 ``(taps * channels,)``: the scale of each stacked input channel (tap-major), so that
    ``value / scale`` lies within e4m3's range. ``gamma`` (the previous channel norm's gain, ``channels``
    values) for the second conv; None for the first (LQ frames)."""
    if gamma is None:
        bound = torch.full((channels,), FRAME_BOUND, dtype=torch.float32, device=device)
    else:
        bound = (gamma.detach().float().reshape(-1).abs() * channels**0.5).clamp_min(SILU_MIN_MAGNITUDE).to(device)
    return (bound / E4M3_MAX).repeat(taps)


def quantise_conv_weight(weight: torch.Tensor, input_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q (N, 9 * C) e4m3, scale (N,) fp32)`` of a 3x3 conv weight ``(N, C, 3, 3)`` applied to inputs
    divided by ``input_scale (C,)``: tap-major along the reduction, one scale per output channel."""
    folded = weight.detach().float().permute(0, 2, 3, 1) * input_scale.float()
    q, scale = quantise_rows_torch(folded.reshape(weight.shape[0], -1))
    return q.contiguous(), scale.reshape(-1).contiguous()


class FP8CausalConv(nn.Module):
    """A :class:`~upscaler.models.lq_proj.CausalConv` whose product runs in FP8: the stacking pass writes
    e4m3 (static per-channel scales), one FP8 implicit-GEMM kernel convolves (:mod:`kernels.fp8_conv`) on
    GPUs with FP8 tensor cores where its tile fits the channels, the same roundings emulated in fp32
    elsewhere. Quantises the conv's weight now; the model-dtype weight is not kept."""

    def __init__(self, conv: CausalConv, input_gamma: torch.Tensor | None, *, use_kernel: bool) -> None:
        super().__init__()
        taps = conv.kernel_size[0]
        input_scale = stacked_input_scales(taps, conv.in_channels, input_gamma, conv.weight.device)
        weight, weight_scale = quantise_conv_weight(conv.stacked_weight(conv.weight), input_scale)
        self.register_buffer("weight", weight)  # (N, 9 * taps * C) e4m3
        self.register_buffer("weight_scale", weight_scale)  # (N,) fp32
        self.register_buffer("inverse_input_scale", 1.0 / input_scale[: conv.in_channels])  # (C,) fp32
        self.register_buffer("bias", conv.bias.detach() if conv.bias is not None else None)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.out_dtype = conv.weight.dtype
        self.use_kernel = use_kernel

    as_frames = staticmethod(CausalConv.as_frames)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.as_frames(self.conv_frames(x, context), x.shape[0])

    def conv_frames(self, x: torch.Tensor, context: torch.Tensor | None, with_bias: bool = True) -> torch.Tensor:
        """As :meth:`CausalConv.conv_frames`: ``(B * T', Cout, h, w)`` channels-last, model dtype."""
        stacked = stacked_taps(x, context, self.inverse_input_scale)
        bias = self.bias if with_bias else None
        if self.use_kernel and stacked.is_cuda and fp8_conv.supported(stacked, self.weight):
            return fp8_conv.conv3x3_fp8(stacked, self.weight, self.weight_scale, bias, out_dtype=self.out_dtype)
        return self._emulated(stacked, bias)

    def _emulated(self, stacked: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The kernel's result from the same e4m3 values, in fp32 (fp32 conv, then the scale and the bias)."""
        weight = self.weight.float().view(self.out_channels, 3, 3, -1).permute(0, 3, 1, 2)
        out = F.conv2d(stacked.float(), weight) * self.weight_scale.view(1, -1, 1, 1)
        if bias is not None:
            out = out + bias.float().view(1, -1, 1, 1)
        return out.to(self.out_dtype).contiguous(memory_format=torch.channels_last)


def convert_lq_convs(lq_proj: nn.Module, groups: Iterable[str]) -> frozenset[str]:
    """Replace the LQ projection's convs named in ``groups`` (``lq_conv1``, ``lq_conv2``) by
    :class:`FP8CausalConv`; logs which product path runs. Returns the groups converted."""
    chosen = frozenset(groups) & set(LQ_FP8_GROUPS)
    if not chosen:
        return chosen
    device = lq_proj.conv1.weight.device
    use_kernel = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    gammas = {"lq_conv1": None, "lq_conv2": lq_proj.norm1.gamma}
    for group in sorted(chosen):
        name = group.removeprefix("lq_")
        setattr(lq_proj, name, FP8CausalConv(getattr(lq_proj, name), gammas[group], use_kernel=use_kernel))
    log.info("lq_proj fp8 convs=%s path=%s", ",".join(sorted(chosen)),
             "implicit-GEMM kernel (FP8 tensor cores)" if use_kernel else "emulated (same roundings, not faster)")
    return chosen
