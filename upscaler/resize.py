"""Moving frames between uint8 RGB (decoder/encoder side) and model tensors in [-1, 1] on the device.

Input side: bicubic resize to the model's working size (``F.interpolate``, ``align_corners=False``,
no antialiasing, as the reference pipeline), done on the GPU when ``device`` is CUDA. Output side:
clamp, scale, round and permute in one pass on the GPU (:mod:`kernels.pixels`), then a single
asynchronous copy to pinned host memory, waited for one step later (:func:`frames_to_host`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from upscaler.timing import StageTimer

PadMode = Literal["replicate", "reflect"]


def _upload(frames: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """``uint8 (T, H, W, 3)`` frames on ``device`` (pinned, asynchronous upload for CUDA)."""
    tensor = torch.as_tensor(frames)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def to_model_input(
    frames: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize ``uint8 (T, H, W, 3)`` RGB frames to ``size = (W', H')`` with bicubic interpolation.

    Returns ``(1, 3, T, H', W')`` in ``dtype`` scaled to [-1, 1] (bicubic overshoot is kept, as the
    reference does). The interpolation runs in float32 on ``device`` (default: the frames' device).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got shape {tuple(frames.shape)}")
    device = torch.device(device) if device is not None else torch.as_tensor(frames).device
    x = _upload(frames, device)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {x.dtype}")
    # (3, T, H, W): colour as the batch and time as the channels of a 2D resize, so the
    # result is already in (C, T, H, W) order, contiguous.
    x = x.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
    width, height = size
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return x.to(dtype).unsqueeze(0)


@dataclass(frozen=True)
class HostFrames:
    """uint8 ``(T, H, W, 3)`` frames on their way to pinned host memory: :meth:`wait` returns them once
    the device-to-host copy has finished (at once for CPU tensors)."""

    frames: torch.Tensor
    copied: torch.cuda.Event | None = None

    def wait(self) -> torch.Tensor:
        """The frames, after the copy has completed."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.frames


def start_uint8_copy(x: torch.Tensor) -> HostFrames:
    """``(1, 3, T, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)``: converted on the tensor's device, then
    copied to pinned host memory without blocking the host (CUDA)."""
    if x.ndim != 5 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected (1, 3, T, H, W), got shape {tuple(x.shape)}")
    if x.is_cuda:
        from kernels.pixels import pixels
    else:
        from kernels.pixels import pixels_torch as pixels
    return start_host_copy(pixels(x[0]))


def start_host_copy(frames: torch.Tensor) -> HostFrames:
    """Copy ``frames`` to pinned host memory without blocking the host (CUDA; CPU tensors as they are)."""
    if frames.device.type != "cuda":
        return HostFrames(frames)
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return HostFrames(host, copied)


def one_behind(copies: Iterable[HostFrames]) -> Iterator[torch.Tensor]:
    """Yield the frames of each started copy once the next one has been started (the last at the end):
    whatever the producer queues on the GPU for copy n+1 is queued before copy n is waited for."""
    pending: HostFrames | None = None
    for started in copies:
        if pending is not None:
            yield pending.wait()
        pending = started
    if pending is not None:
        yield pending.wait()


def frames_to_host(chunks: Iterable[torch.Tensor], timer: StageTimer) -> Iterator[torch.Tensor]:
    """Yield each ``(1, 3, T, H, W)`` chunk as uint8 host frames, one chunk behind.

    The copy of chunk n is waited for only once chunk n+1's GPU work has been queued, so the host
    never drains the GPU queue at a step boundary: the host-side work of the next step (input frames,
    launches) overlaps the GPU instead of following it.
    """

    def started() -> Iterator[HostFrames]:
        for chunk in chunks:
            with timer.stage("to_uint8"):
                yield start_uint8_copy(chunk)

    return one_behind(started())


def pad_to_size(x: torch.Tensor, height: int, width: int, mode: PadMode = "replicate") -> torch.Tensor:
    """Pad the last two dims of ``x`` at the bottom/right up to ``(height, width)`` (crop back with
    ``x[..., :h, :w]``). ``reflect`` falls back to ``replicate`` when the pad is not smaller than the
    frame (reflection cannot reach it)."""
    rows, cols = x.shape[-2:]
    pad_h, pad_w = height - rows, width - cols
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad {rows}x{cols} down to {height}x{width}")
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "reflect" and (pad_h >= rows or pad_w >= cols):
        mode = "replicate"
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, rows, cols)
    return F.pad(flat, (0, pad_w, 0, pad_h), mode=mode).reshape(*lead, height, width)
