"""Whether a frame's elements are reachable with 32-bit offsets (the decoder conv kernels index within a
frame in 32 bits and step between frames in 64)."""

from __future__ import annotations

INT32_SPAN = 2**31


def frame_fits_int32(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether one frame of a ``(F, C, H, W)`` tensor of ``shape`` and ``strides`` spans fewer than 2^31
    elements."""
    return 1 + sum((size - 1) * stride for size, stride in zip(shape[1:], strides[1:])) < INT32_SPAN
