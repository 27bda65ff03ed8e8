"""The MemBlock input kernel (Triton interpreter) against a direct loop and the TCDecoder's PyTorch path."""

from __future__ import annotations

import pytest
import torch

from kernels.frame_pairs import canonical_channels_last, stack_with_previous
from upscaler.models.tcdecoder import _stack_with_previous


def loop_stack(x: torch.Tensor, past: torch.Tensor, batch: int) -> torch.Tensor:
    frames = x.shape[0] // batch
    out = []
    for i in range(x.shape[0]):
        previous = past[i // frames] if i % frames == 0 else x[i - 1]
        out.append(torch.cat([x[i], previous]))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,frames,c,h,w", [(1, 2, 16, 3, 5), (2, 3, 3, 2, 7), (2, 1, 24, 4, 4), (1, 1, 8, 1, 1)])
def test_kernel_matches_the_loop_and_the_torch_path(batch, frames, c, h, w, dtype) -> None:
    g = torch.Generator().manual_seed(batch * 10 + frames)
    x = torch.randn(batch * frames, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    past = torch.randn(batch, c, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    expected = loop_stack(x, past, batch)
    got = stack_with_previous(x, past, batch)
    assert got.is_contiguous(memory_format=torch.channels_last) and canonical_channels_last(got)
    assert torch.equal(got, expected)
    assert torch.equal(_stack_with_previous(x, past, batch), expected)  # CPU: the PyTorch path
    assert torch.equal(_stack_with_previous(x.contiguous(), past.contiguous(), batch), expected)


def test_kernel_rejects_what_it_cannot_run() -> None:
    x = torch.zeros(4, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    past = torch.zeros(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="does not match"):
        stack_with_previous(x, past, 3)
    with pytest.raises(ValueError, match="canonical channels-last"):
        stack_with_previous(x.contiguous(), past, 2)
    with pytest.raises(ValueError, match="past is"):
        stack_with_previous(x, past.half(), 2)
    assert not canonical_channels_last(torch.zeros(2, 8, 3, 3)) and canonical_channels_last(x)
    group = torch.zeros(1, 3, 3, 3, 8).permute(0, 1, 4, 2, 3)  # (B, T, C, H, W) stored (B, T, H, W, C)
    frame = group[:, 1]  # one frame: channels-last by PyTorch's flag, with the group's batch stride
    assert frame.is_contiguous(memory_format=torch.channels_last) and canonical_channels_last(frame)
    assert not canonical_channels_last(group.flatten(0, 1)[::2])
