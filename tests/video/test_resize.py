"""Model input/output conversion: bicubic to [-1, 1], back to uint8, padding to a multiple."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upscaler.resize import frames_to_host, pad_to_size, start_uint8_copy, to_model_input
from upscaler.timing import StageTimer


def _uint8_on_host(x: torch.Tensor) -> torch.Tensor:
    """uint8 host frames of one chunk, copy waited for."""
    return start_uint8_copy(x).wait()


def _frames(t: int = 3, h: int = 19, w: int = 33) -> torch.Tensor:
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_bicubic_matches_the_reference_formulation() -> None:
    frames = _frames()
    x = to_model_input(frames.numpy(), size=(66, 38))
    assert x.shape == (1, 3, 3, 38, 66) and x.dtype == torch.float32 and x.is_contiguous()
    # reference: per frame, [0, 1] -> bicubic (align_corners=False, no antialias) -> * 2 - 1
    ref = F.interpolate(frames.permute(0, 3, 1, 2).float() / 255, size=(38, 66), mode="bicubic", align_corners=False)
    ref = (ref * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    assert x.min() < -1 or x.max() > 1  # bicubic overshoot is kept, as the reference does


def test_same_size_round_trips_exactly_and_dtype_is_honoured() -> None:
    frames = _frames()
    x = to_model_input(frames, size=(33, 19), dtype=torch.bfloat16)
    assert x.dtype == torch.bfloat16
    back = _uint8_on_host(to_model_input(frames, size=(33, 19)))
    assert back.dtype == torch.uint8 and back.shape == frames.shape
    torch.testing.assert_close(back, frames, atol=0, rtol=0)


def test_to_uint8_clamps_and_rounds() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 0.004, 1.0, 2.5]).view(1, 1, 1, 1, 6).expand(1, 3, 1, 1, 6)
    out = _uint8_on_host(x)
    assert out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]


def _chunks(device: str, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(1, 3, 2 + i, 6, 10, generator=gen) * 2 - 1).to(device) for i in range(n)]


def test_frames_to_host_yields_every_chunk_in_order() -> None:
    """One chunk behind internally, but every chunk comes out, in order, converted like start_uint8_copy alone."""
    chunks = _chunks("cpu")
    out = list(frames_to_host(iter(chunks), StageTimer(torch.device("cpu"))))
    assert [o.shape[0] for o in out] == [2, 3, 4, 5]
    for got, chunk in zip(out, chunks):
        torch.testing.assert_close(got, _uint8_on_host(chunk), atol=0, rtol=0)
    assert list(frames_to_host(iter([]), StageTimer(torch.device("cpu")))) == []


def test_frames_to_host_asks_for_the_next_chunk_before_handing_out_the_previous() -> None:
    """The consumer gets chunk n only after the producer was asked for chunk n+1 (its GPU work queued)."""
    produced: list[int] = []

    def producer():
        for i, chunk in enumerate(_chunks("cpu", 3)):
            produced.append(i)
            yield chunk

    seen = []
    for frames in frames_to_host(producer(), StageTimer(torch.device("cpu"))):
        seen.append((frames.shape[0], list(produced)))
    assert seen == [(2, [0, 1]), (3, [0, 1, 2]), (4, [0, 1, 2])]


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="T, H, W, 3"):
        to_model_input(np.zeros((4, 4, 3), np.uint8), size=(4, 4))
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(torch.zeros(1, 4, 4, 3), size=(4, 4))
    with pytest.raises(ValueError, match="1, 3, T, H, W"):
        _uint8_on_host(torch.zeros(2, 3, 1, 4, 4))


@pytest.mark.parametrize("mode", ["replicate", "reflect"])
def test_pad_to_size_and_crop_back(mode: str) -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(1, 2, 3, 5, 7)
    padded = pad_to_size(x, 8, 8, mode)
    assert padded.shape == (1, 2, 3, 8, 8)
    torch.testing.assert_close(padded[..., :5, :7], x)
    if mode == "replicate":
        torch.testing.assert_close(padded[..., 5:, :7], x[..., 4:5, :].expand(-1, -1, -1, 3, -1))
    else:
        torch.testing.assert_close(padded[..., 5, :7], x[..., 3, :])  # mirrored about the last row
    assert pad_to_size(x[..., :4, :4], 4, 4, mode).shape[-2:] == (4, 4)
    with pytest.raises(ValueError):
        pad_to_size(x, 4, 8, mode)


def test_reflect_falls_back_to_replicate_when_the_pad_is_too_large() -> None:
    x = torch.rand(1, 3, 1, 2, 2)
    padded = pad_to_size(x, 8, 8, "reflect")
    torch.testing.assert_close(padded[..., 7, 7], x[..., 1, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu_and_returns_pinned_frames() -> None:
    frames = _frames(4, 54, 96)
    on_gpu = to_model_input(frames, size=(384, 216), device="cuda", dtype=torch.bfloat16)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.bfloat16
    on_cpu = to_model_input(frames, size=(384, 216))
    torch.testing.assert_close(on_gpu.float().cpu(), on_cpu, atol=1e-2, rtol=0)  # bf16 rounding
    back = _uint8_on_host(on_gpu)
    assert back.device.type == "cpu" and back.is_pinned() and back.shape == (4, 216, 384, 3)
    torch.testing.assert_close(back, _uint8_on_host(on_cpu), atol=2, rtol=0)
    chunks = _chunks("cuda")
    streamed = list(frames_to_host(iter(chunks), StageTimer(torch.device("cuda"))))
    assert all(f.is_pinned() for f in streamed)
    for got, chunk in zip(streamed, chunks):
        torch.testing.assert_close(got, _uint8_on_host(chunk.cpu()), atol=0, rtol=0)
