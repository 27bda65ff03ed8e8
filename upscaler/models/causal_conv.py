"""Causal 3D convolution with a streaming cache of its last input frames (Wan VAE semantics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.frame_groups import preferred_format, zeros_as


class CausalConv3d(nn.Conv3d):
    """``nn.Conv3d`` padded causally in time: ``2 * padding[0]`` frames of history in front.

    Streaming: the history of a chunk is the last input frames of the previous chunk, kept in
    ``caches[self.cache_slot]``; before the first chunk it is zeros. Feeding a sequence in chunks
    therefore equals convolving it at once (the Wan VAE's ``feat_cache`` with ``CACHE_T = 2``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pad_t, self.pad_h, self.pad_w = self.padding
        self.history = 2 * pad_t
        self.padding = (0, 0, 0)
        self.cache_slot = -1

    def forward(self, x: torch.Tensor, caches: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``x (B, C, T, H, W)``; ``caches`` is required when the kernel spans more than one frame."""
        if self.history:
            if caches is None or self.cache_slot < 0:
                raise ValueError("a causal conv with a temporal kernel needs its stream cache")
            past = caches.get(self.cache_slot)
            if past is None:
                b, c, _, h, w = x.shape
                past = zeros_as(x, (b, c, self.history, h, w))
            x = torch.cat([past, x], dim=2)
            caches[self.cache_slot] = x[:, :, -self.history :].clone(memory_format=preferred_format(x))
        return F.conv3d(x, self.weight, self.bias, self.stride, (0, self.pad_h, self.pad_w), self.dilation, self.groups)
