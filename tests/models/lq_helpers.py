"""A small LQ projection, clips for it and its stream, shared by the LQ projection tests."""

from __future__ import annotations

import torch

from upscaler.models.config import LQProjConfig

CFG = LQProjConfig(hidden_dim1=16, hidden_dim2=24, out_dim=32, layer_num=2)


def lq_model(cls):
    """``cls(CFG)`` in eval mode with every parameter perturbed (non-trivial norm gains)."""
    torch.manual_seed(0)
    model = cls(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def lq_clip(frames: int, seed: int = 1) -> torch.Tensor:
    """``(1, 3, frames, 32, 48)`` uniform in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, 32, 48, generator=g) * 2 - 1


def stream_lq(model, clip: torch.Tensor) -> list:
    """The outputs of streaming ``clip`` from a reset: 1 frame, then 4 per call (the first output is None)."""
    model.reset()
    outputs = [model.stream(clip[:, :, :1])]
    outputs += [model.stream(clip[:, :, s:s + 4]) for s in range(1, clip.shape[2], 4)]
    return outputs
