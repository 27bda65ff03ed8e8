"""FlashVSR's tiny conditional decoder (TCDecoder, a deepened TAEHV decoder) as a streaming module.

Layout and key names are those of ``TCDecoder.ckpt``: one ``nn.Sequential`` called ``decoder``
whose 27 entries are, by index::

    0 Clamp   1 conv(16+768 -> c0)   2 ReLU   3 conv(c0 -> c0, no bias)   4 ReLU   5-7 MemBlock(c0)
    8 Upsample(2)   9 TGrow(c0, 1)   10 conv(c0 -> c1, no bias)   11-13 MemBlock(c1)
    14 Upsample(2)  15 TGrow(c1, 2)  16 conv(c1 -> c2, no bias)   17-19 MemBlock(c2)
    20 Upsample(2)  21 TGrow(c2, 2)  22 conv(c2 -> c3, no bias)   23 ReLU
    24 conv(c3 -> c3, no bias)   25 ReLU   26 conv(c3 -> 3)

Entries 10, 16 and 22 are :class:`UpsampledConv`: each takes the image before the Upsample in front
of it (8, 14, 20), which the stream never materialises; every ReLU runs fused into the conv before it.
Entries 3 and 24 are the "deepening" 3x3 convs that FlashVSR inserts after every top-level ReLU
(identity-initialised when trained, arbitrary in the checkpoint). The checkpoint holds every
parameter of this module and nothing else, and its TGrow weights already have their final shape,
so it loads strictly with no key or shape patching.

Streaming follows the reference's sequential (``parallel=False``) TAEHV decode: a MemBlock sees the
layer input of the previous frame (zeros before the first frame), the conditioning LQ frames are
pixel-unshuffled by (4, 8, 8) and stacked in front of the latent channels, and the first call drops
the first ``frames_to_trim`` (3) output frames. The work is chunk-parallel instead of one frame at
a time: each stage runs on a whole group of frames, the "past" of frame t being frame t-1 of the
same group, and of a group's first frame the last one carried in the state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.config import TCDecoderConfig
from upscaler.models.conv_fusion import conv_add_relu, conv_relu
from upscaler.models.derived_weight import DerivedWeight
from upscaler.models.frame_groups import (
    StageShape,
    group_sizes,
    in_preferred_format,
    preferred_format,
    run_in_frame_groups,
    zeros_as,
)
from upscaler.models.upsampled_conv import UpsampledConv

logger = logging.getLogger(__name__)

TIME_STRIDES = (1, 2, 2)
"""Frames out per frame in of the TGrow layer of each upsampling stage."""
SPACE_SCALE = 8
TIME_SCALE = 4
IMAGE_CHANNELS = 3
DEFAULT_FRAMES_PER_PASS = 8


def _conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the decoder input to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block whose first conv also sees the previous frame's input."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(n_in * 2, n_out),
            nn.ReLU(inplace=True),
            _conv3x3(n_out, n_out),
            nn.ReLU(inplace=True),
            _conv3x3(n_out, n_out),
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor, batch: int) -> torch.Tensor:
        """``x``: ``(batch*T, C, H, W)`` frames in batch-major order; ``past``: ``(batch, C, H, W)``,
        the input of the frame before the first one."""
        out = conv_relu(_stack_with_previous(x, past, batch), self.conv[0])
        out = conv_relu(out, self.conv[2])
        return conv_add_relu(out, self.conv[4], self.skip(x))


def _stack_with_previous(x: torch.Tensor, past: torch.Tensor, batch: int) -> torch.Tensor:
    """``(batch*T, 2C, H, W)``: each frame of ``x`` with the frame before it (``past`` before a batch
    entry's first frame) stacked behind it over channels; one Triton pass for channels-last CUDA frames."""
    from kernels.frame_pairs import canonical_channels_last, stack_with_previous

    if x.is_cuda and canonical_channels_last(x) and canonical_channels_last(past):
        return stack_with_previous(x, past, batch)
    n, c, h, w = x.shape
    frames = n // batch
    stacked = torch.empty((n, 2 * c, h, w), dtype=x.dtype, device=x.device, memory_format=preferred_format(x))
    stacked[:, :c] = x
    stacked5 = stacked.unflatten(0, (batch, frames))
    stacked5[:, 0, c:] = past
    stacked5[:, 1:, c:] = x.unflatten(0, (batch, frames))[:, :-1]
    return stacked


class TGrow(nn.Module):
    """1x1 conv that turns each frame into ``stride`` frames."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)


def _grow(x: torch.Tensor, grow: TGrow) -> torch.Tensor:
    """``grow`` on ``(n, c, h, w)``: a 1x1 conv to ``stride * c`` channels split into ``stride``
    consecutive frames, ``(n * stride, c, h, w)``. The reference upsamples first; a 1x1 conv and the
    split into frames commute exactly with nearest upsampling, so this runs on 4x fewer pixels and
    the upsampling moves to the start of the next stage."""
    if grow.stride == 1:
        return grow.conv(x)
    n, c_in, h, w = x.shape
    c = grow.conv.out_channels // grow.stride
    if x.is_contiguous(memory_format=torch.channels_last):
        # One GEMM per (frame, time step) straight into the channels-last output frames, instead of
        # a 1x1 conv to stride * c channels and a copy that moves each frame's channel groups apart
        # (two 1088x1920x128 bf16 frames on an H200: 1.15 ms instead of 3.64).
        pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c_in)
        weight = grow.conv.weight.reshape(grow.stride, c, c_in)
        out = torch.empty((n, grow.stride, h * w, c), dtype=x.dtype, device=x.device)
        for frame in range(n):
            for step in range(grow.stride):
                torch.mm(pixels[frame], weight[step].t(), out=out[frame, step])
        return out.view(n * grow.stride, h, w, c).permute(0, 3, 1, 2)
    return grow.conv(x).reshape(n * grow.stride, c, h, w)


class OutputConv(nn.Conv2d):
    """The last 3x3 conv (to 3 image channels). Half-precision channels-last CUDA frames take
    :mod:`kernels.output_conv` (one streaming read of the input); other channels-last frames run with the
    output channels zero-padded to 8: cuDNN has no channels-last kernel for 3 output channels and
    converted the 128-channel full-resolution input to NCHW and back on every call. The derived weights
    are cached and rebuilt when the weight changes."""

    PADDED_CHANNELS = 8

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out, 3, padding=1)
        pad = self.PADDED_CHANNELS - n_out
        self._padded_weight = DerivedWeight(
            self, lambda w: F.pad(w, (0, 0, 0, 0, 0, 0, 0, pad)).contiguous(memory_format=torch.channels_last)
        )
        self._padded_bias = DerivedWeight(self, lambda b: F.pad(b, (0, pad)))
        self._output_taps = DerivedWeight(self, _pack_output_taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        from kernels.output_conv import output_conv, supported

        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and supported(x):
            return output_conv(x, self._output_taps(self.weight), self.bias, self.out_channels)
        if not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        out = F.conv2d(x, self._padded_weight(self.weight), self._padded_bias(self.bias), padding=1)
        return out[:, : self.out_channels]


def _pack_output_taps(weight: torch.Tensor) -> torch.Tensor:
    """The taps as :mod:`kernels.output_conv` reads them (imported here: Triton serves the GPU path only)."""
    from kernels.output_conv import pack_output_taps

    return pack_output_taps(weight)


@dataclass(frozen=True)
class Step:
    """One unit of a decoder stage: layer ``index``, with the ReLU that follows it fused in when ``relu``."""

    index: int
    relu: bool = False


@dataclass
class TCDecoderState:
    """Everything one stream carries between ``decode`` calls."""

    frames_per_pass: int = DEFAULT_FRAMES_PER_PASS
    started: bool = False
    past: dict[int, torch.Tensor] = field(default_factory=dict)
    """Input of the last frame seen by each MemBlock (by layer index)."""


class TCDecoder(nn.Module):
    """TCDecoder with ``TCDecoder.ckpt`` key names; streaming ``decode`` (see the module docstring)."""

    def __init__(self, cfg: TCDecoderConfig) -> None:
        super().__init__()
        if len(cfg.channels) != len(TIME_STRIDES) + 1:
            raise ValueError(f"TCDecoder needs {len(TIME_STRIDES) + 1} channel counts, got {cfg.channels}")
        self.cfg = cfg
        c = cfg.channels
        layers: list[nn.Module] = [
            Clamp(),
            _conv3x3(cfg.cond_channels + cfg.latent_channels, c[0]),
            nn.ReLU(inplace=True),
            _conv3x3(c[0], c[0], bias=False),
            nn.ReLU(inplace=True),
        ]
        for i, stride in enumerate(TIME_STRIDES):
            layers += [MemBlock(c[i], c[i]) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), TGrow(c[i], stride), UpsampledConv(c[i], c[i + 1], bias=False)]
        layers += [
            nn.ReLU(inplace=True),
            _conv3x3(c[-1], c[-1], bias=False),
            nn.ReLU(inplace=True),
            OutputConv(c[-1], IMAGE_CHANNELS),
        ]
        self.decoder = nn.Sequential(*layers)
        self._stages = self._plan_stages()
        self.frames_to_trim = TIME_SCALE - 1
        # A stage's activations are per input frame (its TGrow runs last, at the low resolution).
        self._stage_shapes = [StageShape(1, 1, max(c[0], cfg.cond_channels + cfg.latent_channels))]
        self._stage_shapes += [StageShape(1, 4 ** (i + 1), max(c[i], c[i + 1])) for i in range(len(TIME_STRIDES))]

    def _plan_stages(self) -> list[list[Step]]:
        """Steps per stage, in execution order: a new stage starts at each Upsample (run by the
        :class:`UpsampledConv` after it), the TGrow that follows the Upsample in the checkpoint runs at
        the end of the stage before, and a ReLU right after a conv is fused into that conv."""
        stages: list[list[int]] = [[]]
        for index, layer in enumerate(self.decoder):
            if isinstance(layer, nn.Upsample):
                stages.append([])
            elif isinstance(layer, TGrow):
                stages[-2].append(index)
            else:
                stages[-1].append(index)
        return [self._fuse_relus(indices) for indices in stages]

    def _fuse_relus(self, indices: list[int]) -> list[Step]:
        steps: list[Step] = []
        for index in indices:
            layer = self.decoder[index]
            previous = self.decoder[steps[-1].index] if steps else None
            if isinstance(layer, nn.ReLU) and type(previous) in (nn.Conv2d, UpsampledConv):
                steps[-1] = Step(steps[-1].index, relu=True)
            else:
                steps.append(Step(index))
        return steps

    def new_state(self, *, frames_per_pass: int = DEFAULT_FRAMES_PER_PASS) -> TCDecoderState:
        """A fresh stream; ``frames_per_pass`` bounds the output frames one full-resolution pass
        holds at once (the earlier, smaller stages take proportionally more frames per pass)."""
        if frames_per_pass < 1:
            raise ValueError(f"frames_per_pass must be >= 1, got {frames_per_pass}")
        return TCDecoderState(frames_per_pass=frames_per_pass)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, cond: torch.Tensor, state: TCDecoderState) -> torch.Tensor:
        """Decode ``latents (B, 16, t, h, w)`` with the LQ frames ``cond (B, 3, n, 8h, 8w)`` in [-1, 1].

        The first call takes ``4t - 3 <= n <= 4t`` cond frames (the first frame is repeated in
        front up to ``4t``) and returns ``4t - 3`` frames; later calls take ``n = 4t`` and return
        ``4t``. Output ``(B, 3, n', 8h, 8w)`` in the decoder's dtype, nominally in [-1, 1] and not
        clamped (as the reference).
        """
        param = self.decoder[1].weight
        latents = latents.to(device=param.device, dtype=param.dtype)
        cond = cond.to(device=param.device, dtype=param.dtype)
        features = self._unshuffle_cond(cond, latents.shape[2], first_call=not state.started)
        if features.shape[-2:] != latents.shape[-2:]:
            raise ValueError(f"cond {tuple(cond.shape)} does not match latents {tuple(latents.shape)} (8x)")
        x = torch.cat([features, latents.transpose(1, 2)], dim=2)
        stages = [partial(self._run_stage, steps=steps, state=state) for steps in self._stages]
        sizes = group_sizes(self._stage_shapes, state.frames_per_pass)
        frames = run_in_frame_groups(x, stages, sizes, dim=1)
        if not state.started:
            frames = frames[:, self.frames_to_trim :]
            state.started = True
            logger.debug("tcdecoder stream started: %d latent frames, frame groups per stage %s", x.shape[1], sizes)
        return frames.transpose(1, 2).mul(2).sub_(1).contiguous()

    def _unshuffle_cond(self, cond: torch.Tensor, latent_frames: int, first_call: bool) -> torch.Tensor:
        """``(B, 3, n, H, W)`` -> ``(B, n/4, 3*4*8*8, H/8, W/8)``, channel order (c, t, y, x)."""
        b, c, n, h, w = cond.shape
        expected = TIME_SCALE * latent_frames
        short = expected - n
        if short < 0 or short >= TIME_SCALE or (short and not first_call):
            want = f"{expected - TIME_SCALE + 1}..{expected}" if first_call else f"{expected}"
            raise ValueError(f"{latent_frames} latent frames need {want} conditioning frames, got {n}")
        if short:
            cond = torch.cat([cond[:, :, :1].expand(b, c, short, h, w), cond], dim=2)
        hs, ws = h // SPACE_SCALE, w // SPACE_SCALE
        if hs * SPACE_SCALE != h or ws * SPACE_SCALE != w:
            raise ValueError(f"conditioning frames of {h}x{w} are not a multiple of {SPACE_SCALE}")
        packed = cond.reshape(b, c, latent_frames, TIME_SCALE, hs, SPACE_SCALE, ws, SPACE_SCALE)
        packed = packed.permute(0, 2, 1, 3, 5, 7, 4, 6)
        return packed.reshape(b, latent_frames, c * TIME_SCALE * SPACE_SCALE * SPACE_SCALE, hs, ws)

    def _run_stage(self, x: torch.Tensor, steps: list[Step], state: TCDecoderState) -> torch.Tensor:
        """The decoder layers of ``steps`` (in order) on ``x (B, T, C, H, W)``; returns ``(B, T', C', H', W')``."""
        batch = x.shape[0]
        h = in_preferred_format(x.flatten(0, 1))
        for step in steps:
            layer = self.decoder[step.index]
            if isinstance(layer, TGrow):
                h = _grow(h, layer)
            elif isinstance(layer, UpsampledConv):
                h = layer(h, relu=step.relu)
            elif isinstance(layer, MemBlock):
                past = state.past.get(step.index)
                if past is None:
                    past = zeros_as(h, (batch, *h.shape[1:]))
                state.past[step.index] = h.unflatten(0, (batch, -1))[:, -1].clone(memory_format=preferred_format(h))
                h = layer(h, past, batch)
            elif step.relu:
                h = conv_relu(h, layer)
            else:
                h = layer(h)
        return h.unflatten(0, (batch, -1))
