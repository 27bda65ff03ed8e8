"""Interleave the four phase outputs of a sub-pixel convolution into the 2x-upsampled image.

A 3x3 conv of a 2x nearest-upsampled image equals, per output phase ``(a, b)`` (row and column
parity), a 2x2 conv of the low-resolution image (see :mod:`upscaler.models.upsampled_conv`). Run as
one 2x2 conv with ``4 * C`` output channels and padding 1, the phase ``(a, b)`` value of output pixel
``(2i + a, 2j + b)`` sits at ``y[:, (2a + b) * C : (2a + b + 1) * C, i + a, j + b]``. This module
moves those values into place, optionally applying a ReLU on the way (it commutes with the move).

PyTorch's strided copy of the same gather ran at about a third of the memory bandwidth on an H200
(24 ms for 8 frames of 3840x2176x128 bf16); the Triton kernel reads and writes whole pixels of
``C`` contiguous channels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_compat import FP_FUSION

PHASES = 4


@triton.jit
def _interleave_kernel(
    Y, OUT, H, W, C, stride_yn, stride_yh, stride_yw, stride_on, stride_oc, stride_oy, stride_ox,
    RELU: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One output row ``(n, Y)`` and ``BLOCK_X`` output columns of all ``C`` channels per program
    (the output strides are free: channels-last, or NCHW planes such as a frame of a 5D video)."""
    row = tl.program_id(0).to(tl.int64)
    n = row // (2 * H)
    out_y = row % (2 * H)
    i = out_y // 2
    a = out_y % 2
    xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
    j = xs // 2
    b = xs % 2
    cs = tl.arange(0, BLOCK_C)
    keep = (xs < 2 * W)[:, None] & (cs < C)[None, :]
    src = Y + n * stride_yn + (i + a) * stride_yh + ((j + b) * stride_yw + (2 * a + b) * C)[:, None] + cs[None, :]
    values = tl.load(src, mask=keep)
    if RELU:
        values = tl.maximum(values, 0.0)
    dst = OUT + n * stride_on + out_y * stride_oy + (xs * stride_ox)[:, None] + (cs * stride_oc)[None, :]
    tl.store(dst, values, mask=keep)


def phase_view(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``y (N, 4C, height+1, width+1)`` as a ``(N, height, 2, width, 2, C)`` view: element
    ``[n, i, a, j, b, c]`` is phase ``(a, b)`` of output pixel ``(2i + a, 2j + b)``, channel ``c``."""
    n, channels4 = y.shape[:2]
    c = channels4 // PHASES
    s_n, s_c, s_h, s_w = y.stride()
    return y.as_strided((n, height, 2, width, 2, c), (s_n, s_h, s_h + 2 * c * s_c, s_w, s_w + c * s_c, s_c))


def interleave_phases_torch(y: torch.Tensor, height: int, width: int, relu: bool = False,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`interleave_phases` with PyTorch ops (any device; the reference of the Triton kernel)."""
    n, c = y.shape[0], y.shape[1] // PHASES
    fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    image = torch.empty((n, c, 2 * height, 2 * width), dtype=y.dtype, device=y.device, memory_format=fmt)
    pixels = image.permute(0, 2, 3, 1).view(n, height, 2, width, 2, c) if fmt == torch.channels_last else (
        image.view(n, c, height, 2, width, 2).permute(0, 2, 3, 4, 5, 1))
    pixels.copy_(phase_view(y, height, width))
    if relu:
        image.relu_()
    return image if out is None else out.copy_(image)


def interleave_phases(y: torch.Tensor, height: int, width: int, relu: bool = False,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(N, C, 2*height, 2*width)`` image from the phase-major output ``y (N, 4C, height+1,
    width+1)`` of a padded 2x2 sub-pixel conv, in ``y``'s memory format or written into ``out`` (any
    strides, e.g. the frames of a ``(C, T, H, W)`` video as ``(T, C, H, W)``): channels-last CUDA
    tensors go through the Triton kernel, anything else through PyTorch."""
    channels4, hy, wy = y.shape[1:]
    if channels4 % PHASES or hy != height + 1 or wy != width + 1:
        raise ValueError(f"phase output {tuple(y.shape)} does not match a {height}x{width} input")
    shape = (y.shape[0], channels4 // PHASES, 2 * height, 2 * width)
    if out is not None and (tuple(out.shape) != shape or out.dtype != y.dtype or out.device != y.device):
        raise ValueError(f"out must be {y.dtype} {shape} on {y.device}, got {out.dtype} {tuple(out.shape)}")
    if y.is_cuda and y.is_contiguous(memory_format=torch.channels_last):
        return interleave_phases_triton(y, height, width, relu, out)
    return interleave_phases_torch(y, height, width, relu, out)


def interleave_phases_triton(y: torch.Tensor, height: int, width: int, relu: bool = False,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`interleave_phases` with the Triton kernel; ``y`` must be channels-last."""
    if not y.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("the Triton interleave needs a channels-last phase output")
    n, c = y.shape[0], y.shape[1] // PHASES
    if out is None:
        out = torch.empty((n, c, 2 * height, 2 * width), dtype=y.dtype, device=y.device,
                          memory_format=torch.channels_last)
    block_c = triton.next_power_of_2(c)
    block_x = max(1, 4096 // block_c)
    grid = (n * 2 * height, triton.cdiv(2 * width, block_x))
    _interleave_kernel[grid](
        y, out, height, width, c, y.stride(0), y.stride(2), y.stride(3), *out.stride(),
        RELU=relu, BLOCK_X=block_x, BLOCK_C=block_c, num_warps=4, **FP_FUSION,
    )
    return out
