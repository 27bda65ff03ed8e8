"""Colour correction of upscaled frames against the bicubic-upscaled input (the "style").

``wavelet``: keep the content's high frequencies and take the style's low frequencies, where the
low band is five successive 3x3 Gaussian blurs with dilation 1, 2, 4, 8, 16 (replicate padding).
``adain``: per frame and channel, give the content the style's mean and standard deviation.
Both match FlashVSR's colour corrector and clamp to [-1, 1]. Every operation is per frame, so the
result does not depend on how a clip is cut into chunks.
"""

from __future__ import annotations

import torch

from upscaler.models.fusion import fusable

METHODS = ("wavelet", "adain", "none")
_EPS = 1e-5


def _blur_axis(x: torch.Tensor, dim: int, dilation: int) -> torch.Tensor:
    """``[1, 2, 1] / 4`` along ``dim`` with taps ``dilation`` apart, replicate padding."""
    length = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, length - 1, 1)
    if dilation >= length:
        # Every tap lands beyond an edge and reads that edge (replicate padding).
        before, after = first.expand_as(x), last.expand_as(x)
    else:
        edge = x.narrow(dim, 0, dilation)
        before = torch.cat([first.expand_as(edge), x.narrow(dim, 0, length - dilation)], dim)
        after = torch.cat([x.narrow(dim, dilation, length - dilation), last.expand_as(edge)], dim)
    return (before + after).mul_(0.25).add_(x, alpha=0.5)


def wavelet_low(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Low-frequency band of ``x (..., H, W)``: ``levels`` 3x3 Gaussian blurs ``[1,2,1]^T [1,2,1] / 16``
    with dilation 1, 2, 4, ... and replicate padding, in float32. The blur is separable, and so is
    the clamping of replicate padding, so each level is a horizontal then a vertical 3-tap pass."""
    planes = x.float()
    for level in range(levels):
        dilation = 2**level
        planes = _blur_axis(_blur_axis(planes, -1, dilation), -2, dilation)
    return planes


def wavelet_fix(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """``content``'s high band plus ``style``'s low band (float32).

    ``content - low(content) + low(style)`` is computed as ``content - low(content - style)``: the
    band split is linear (replicate padding included), so one blur pass serves both inputs.
    """
    content = content.float()
    return content - wavelet_low(content - style.float(), levels)


@fusable
def _wavelet_fix_clamped(content: torch.Tensor, style: torch.Tensor, levels: int) -> torch.Tensor:
    """:func:`wavelet_fix` clamped to [-1, 1] in ``content``'s dtype: one element-wise chain,
    fused into a few kernels when compilation is on."""
    return wavelet_fix(content, style, levels).clamp(-1.0, 1.0).to(content.dtype)


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (biased variance + eps) over the last two dims, kept for broadcasting."""
    flat = x.flatten(-2)
    var, mean = torch.var_mean(flat, dim=-1, unbiased=False, keepdim=True)
    return mean.unsqueeze(-1), (var + _EPS).sqrt().unsqueeze(-1)


def adain_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``content`` normalised per frame and channel, then given ``style``'s mean and std (float32)."""
    c_mean, c_std = _mean_std(content.float())
    s_mean, s_std = _mean_std(style.float())
    return (content.float() - c_mean) / c_std * s_std + s_mean


class ColorFix:
    """``ColorFix(method)(frames, style)`` for ``(B, 3, T, H, W)`` tensors in [-1, 1].

    ``method`` is ``"wavelet"``, ``"adain"`` or ``"none"`` (frames returned unchanged). The output
    has the frames' dtype and is clamped to [-1, 1].
    """

    def __init__(self, method: str = "wavelet", levels: int = 5) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown colour fix {method!r}; expected one of {METHODS}")
        self.method = method
        self.levels = levels

    def __call__(self, frames: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.method == "none":
            return frames
        if frames.shape != style.shape:
            raise ValueError(f"frames {tuple(frames.shape)} and style {tuple(style.shape)} differ in shape")
        if self.method == "wavelet":
            # Contiguous inputs: the compiled chain guards on strides, and the style is a view into
            # the LQ window whose strides change with the window's length (a recompile per step).
            return _wavelet_fix_clamped(frames.contiguous(), style.contiguous(), self.levels)
        return adain_fix(frames, style).clamp_(-1.0, 1.0).to(frames.dtype)
