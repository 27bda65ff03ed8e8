"""The fused-conv helpers: eager semantics off CUDA, and a permanent fallback when cuDNN has no fused engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from upscaler.models import conv_fusion


def test_eager_paths_compute_conv_relu_and_residual() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x, residual = torch.randn(2, 4, 5, 7), torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(conv_fusion.conv_relu(x, conv), torch.relu(conv(x)))
    torch.testing.assert_close(conv_fusion.conv_add_relu(x, conv, residual), torch.relu(conv(x) + residual))


def test_a_device_without_fused_engines_falls_back_once_and_keeps_the_result(monkeypatch, caplog) -> None:
    calls = []

    def no_engine(*args):
        calls.append(args)
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore detail")

    monkeypatch.setattr(conv_fusion, "_cudnn_fusable", lambda x, conv: x.device not in conv_fusion._unfusable_devices)
    monkeypatch.setattr(conv_fusion, "_FUSED_RELU", no_engine)
    monkeypatch.setattr(conv_fusion, "_unfusable_devices", set())
    conv = nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(1, 3, 4, 4)
    with caplog.at_level("WARNING"):
        first = conv_fusion.conv_relu(x, conv)
        second = conv_fusion.conv_relu(x, conv)
    torch.testing.assert_close(first, torch.relu(conv(x)))
    torch.testing.assert_close(second, first)
    assert len(calls) == 1 and "CUDNN_STATUS_NOT_SUPPORTED" in caplog.text


def test_out_of_memory_is_not_mistaken_for_a_missing_engine(monkeypatch) -> None:
    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(conv_fusion, "_cudnn_fusable", lambda x, conv: True)
    monkeypatch.setattr(conv_fusion, "_FUSED_ADD_RELU", oom)
    monkeypatch.setattr(conv_fusion, "_unfusable_devices", set())
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(torch.OutOfMemoryError):
        conv_fusion.conv_add_relu(x, nn.Conv2d(3, 3, 3, padding=1), torch.randn(1, 3, 4, 4).contiguous(
            memory_format=torch.channels_last))
    assert not conv_fusion._unfusable_devices
