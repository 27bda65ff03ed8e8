"""FlashVSR's LQ projection: low-res frames (at output size, in [-1, 1]) -> per-block DiT features.

Pixel-unshuffle by 16, two causal 3D convs (kernel (4, 3, 3), time stride 2) each followed by a
channel RMS norm and SiLU, then one linear per fed DiT block. 4 input frames make one latent frame of
features. The two checkpoint versions differ only in what pads each conv in time:

* v1 (``BufferLQProj``, ``Buffer_LQ4x_Proj``): every call pads a conv with the last 2 frames of
  *its own* input, so calls are independent of each other.
* v1.1 (``CausalLQProj``, ``Causal_LQ4x_Proj``): a conv is padded with the last 2 frames of the
  *previous* call's input (replicated first frame at the start): a true causal stream.

Streaming (:meth:`stream`) follows the reference ``stream_forward``: the first call takes 1 frame,
padded in front with 3 copies of it, only primes the caches and returns None; each later call takes 4
frames and returns one latent frame of features per linear layer, ``(B, h*w, out_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.config import LQProjConfig
from upscaler.models.derived_weight import DerivedWeight

CONV_KERNEL = (4, 3, 3)
CONV_STRIDE = (2, 1, 1)
TIME_CONTEXT = 2  # frames of causal padding in time (2 * padding of 1)
FIRST_CALL_COPIES = 3
FRAMES_PER_CALL = 4


class ChannelRMSNorm(nn.Module):
    """``F.normalize`` over channels times ``sqrt(C) * gamma`` (key ``gamma``, shape ``(C, 1, 1, 1)``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def stacked_taps(x: torch.Tensor, context: torch.Tensor | None, inverse_scale: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The padded input frames' time taps stacked along channels: ``(B * T', 4C, h + 2, w + 2)``
    channels-last, in one Triton pass on CUDA (:mod:`kernels.time_taps`). With ``inverse_scale`` (fp32,
    ``C`` values): quantised to e4m3, ``clamp(x * inverse_scale[c], -448, 448)``, for the FP8 conv."""
    if x.is_cuda:
        from kernels.time_taps import stack_time_taps

        return stack_time_taps(x, context, inverse_scale)
    if context is None:
        x = F.pad(x, (1, 1, 1, 1, TIME_CONTEXT, 0), mode="replicate")
    else:
        x = F.pad(torch.cat([context, x], dim=2), (1, 1, 1, 1, 0, 0), mode="replicate")
    b, c, _, h, w = x.shape
    windows = x.unfold(2, CONV_KERNEL[0], CONV_STRIDE[0])  # (B, C, T', h, w, taps)
    frames = windows.shape[2]
    stacked = windows.permute(0, 2, 3, 4, 5, 1).reshape(b * frames, h, w, -1)  # taps, then channels
    if inverse_scale is not None:
        from kernels.fp8_quant import quantise_static_torch

        stacked = quantise_static_torch(stacked, inverse_scale.repeat(CONV_KERNEL[0]))
    return stacked.permute(0, 3, 1, 2)


def _stack_taps(weight: torch.Tensor) -> torch.Tensor:
    """``(Cout, Cin, taps, kh, kw)`` -> ``(Cout, taps*Cin, kh, kw)`` channels-last, tap-major channels."""
    cout, cin, taps, kh, kw = weight.shape
    stacked = weight.permute(0, 2, 1, 3, 4).reshape(cout, taps * cin, kh, kw)
    return stacked.contiguous(memory_format=torch.channels_last)


class CausalConv(nn.Conv3d):
    """Conv3d padded causally in time (by a given context, or by replicating the first frame) and by
    replication in space.

    Computed as a 2D conv over the time taps stacked along channels: output frame ``t`` reads input
    frames ``2t .. 2t+3``, so its input is those 4 frames' channels side by side (channels-last) and
    the weight ``(Cout, Cin, 4, 3, 3)`` becomes ``(Cout, 4*Cin, 3, 3)``. Same sums as the 3D conv;
    cuDNN has far faster kernels for this 2D form on recent GPUs (on an H100 the 3D conv fell back
    to an sm80 kernel). The output is ``(B, Cout, T', h, w)`` stored channels-last (time, rows,
    columns, channels), which the channel norm and the token projection read without a transpose.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, CONV_KERNEL, stride=CONV_STRIDE)
        self.stacked_weight = DerivedWeight(self, _stack_taps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self.as_frames(self.conv_frames(x, context), x.shape[0])

    def conv_frames(self, x: torch.Tensor, context: torch.Tensor | None, with_bias: bool = True) -> torch.Tensor:
        """The conv's output frames ``(B * T', Cout, h, w)`` (channels-last for channels-last input), with
        or without the bias."""
        return F.conv2d(stacked_taps(x, context), self.stacked_weight(self.weight), self.bias if with_bias else None)

    @staticmethod
    def as_frames(out: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B * T', C, h, w)`` -> the 3D conv's ``(B, C, T', h, w)`` (a view)."""
        return out.unflatten(0, (batch, -1)).transpose(1, 2)


class _LQProj(nn.Module):
    """Shared layers and stream bookkeeping; subclasses choose the time context of each conv."""

    def __init__(self, cfg: LQProjConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv1 = CausalConv(cfg.in_dim * cfg.unshuffle**2, cfg.hidden_dim1)
        self.norm1 = ChannelRMSNorm(cfg.hidden_dim1)
        self.conv2 = CausalConv(cfg.hidden_dim1, cfg.hidden_dim2)
        self.norm2 = ChannelRMSNorm(cfg.hidden_dim2)
        self.linear_layers = nn.ModuleList([nn.Linear(cfg.hidden_dim2, cfg.out_dim) for _ in range(cfg.layer_num)])
        self._contexts: list[torch.Tensor | None] = [None, None]
        self._calls = 0

    @property
    def dtype(self) -> torch.dtype:
        """The model dtype (the convs' weights may be e4m3 in FP8 mode; the norms' gains never are)."""
        return self.norm1.gamma.dtype

    def reset(self) -> None:
        """Forget the stream (start of a new clip)."""
        self._contexts = [None, None]
        self._calls = 0

    def _stream_context(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Time context of conv ``index`` for its streamed input ``x``; records what the next call needs."""
        raise NotImplementedError

    def _one_shot(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stack over a whole unshuffled clip ``(B, C, 4 + 4n, h, w)`` -> ``(B, C2, n, h, w)``."""
        raise NotImplementedError

    def _layer(self, index: int, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """``silu(norm(conv(x)))``; on CUDA the conv runs without its bias and one Triton pass adds it,
        normalises and applies the SiLU in place (:mod:`kernels.channel_norm`)."""
        conv, norm = (self.conv1, self.norm1) if index == 0 else (self.conv2, self.norm2)
        if x.is_cuda:
            from kernels.channel_norm import bias_norm_silu_, supports

            out = conv.conv_frames(x, context, with_bias=False)
            if supports(out):
                return conv.as_frames(bias_norm_silu_(out, conv.bias, norm.gamma, norm.scale), x.shape[0])
            out = out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)
            return F.silu(norm(conv.as_frames(out, x.shape[0])))
        return F.silu(norm(conv(x, context)))

    def _unshuffle(self, frames: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = frames.shape
        x = F.pixel_unshuffle(frames.transpose(1, 2).reshape(b * t, c, h, w), self.cfg.unshuffle)
        return x.view(b, t, *x.shape[1:]).transpose(1, 2)

    def _project(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = x.flatten(2).transpose(1, 2)  # (B, f*h*w, C), raster order
        return [layer(tokens) for layer in self.linear_layers]

    @staticmethod
    def _pad_first(frames: torch.Tensor) -> torch.Tensor:
        return torch.cat([frames[:, :, :1].expand(-1, -1, FIRST_CALL_COPIES, -1, -1), frames], dim=2)

    def stream(self, frames: torch.Tensor) -> list[torch.Tensor] | None:
        """Feed ``frames`` ``(B, 3, t, H, W)`` in [-1, 1]: 1 frame on the first call (returns None),
        then 4 frames per call (returns ``layer_num`` tensors ``(B, H/16 * W/16, out_dim)``)."""
        first = self._calls == 0
        expected = 1 if first else FRAMES_PER_CALL
        if frames.shape[2] != expected:
            raise ValueError(f"LQ projection call {self._calls} takes {expected} frame(s), got {frames.shape[2]}")
        self._calls += 1
        frames = frames.to(self.dtype)
        x = self._unshuffle(self._pad_first(frames) if first else frames)
        x = self._layer(0, x, self._stream_context(0, x))
        context = self._stream_context(1, x)
        if first:
            return None
        return self._project(self._layer(1, x, context))

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """One-shot features of a whole clip ``(B, 3, 1 + 4n, H, W)``, computed without the stream state;
        equal to concatenating the outputs of :meth:`stream` over the clip."""
        if (video.shape[2] - 1) % FRAMES_PER_CALL:
            raise ValueError(f"one-shot LQ projection takes 1 + 4n frames, got {video.shape[2]}")
        x = self._unshuffle(self._pad_first(video.to(self.dtype)))
        return self._project(self._one_shot(x))


class BufferLQProj(_LQProj):
    """v1 (``JunhaoZhuang/FlashVSR``): each conv is padded with the tail of its own input."""

    def _stream_context(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        return x[:, :, -TIME_CONTEXT:]

    def _one_shot(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        groups = x[:, :, FRAMES_PER_CALL:].reshape(b, c, -1, FRAMES_PER_CALL, h, w)
        n = groups.shape[2]
        groups = groups.transpose(1, 2).reshape(b * n, c, FRAMES_PER_CALL, h, w)
        for index in range(2):
            groups = self._layer(index, groups, groups[:, :, -TIME_CONTEXT:])
        return groups.reshape(b, n, -1, h, w).transpose(1, 2)


class CausalLQProj(_LQProj):
    """v1.1 (``JunhaoZhuang/FlashVSR-v1.1``): each conv is padded with the tail of the previous input."""

    def _stream_context(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        previous = self._contexts[index]
        self._contexts[index] = x[:, :, -TIME_CONTEXT:].clone()
        return previous

    def _one_shot(self, x: torch.Tensor) -> torch.Tensor:
        x = self._layer(0, x, None)
        return self._layer(1, x, None)[:, :, 1:]


LQ_PROJ_CLASSES: dict[str, type[_LQProj]] = {"v1": BufferLQProj, "v1.1": CausalLQProj}
