"""The small-preset DiT with a prompt prepared, shared by the model tests (one per test module)."""

from __future__ import annotations

import pytest
import torch

from upscaler.models.config import load_preset
from upscaler.models.dit import WanDiT


@pytest.fixture(scope="module")
def dit() -> WanDiT:
    torch.manual_seed(0)
    cfg = load_preset("small").dit
    model = WanDiT(cfg).eval()
    model.prepare(torch.randn(1, cfg.text_len, cfg.text_dim))
    return model
