"""Each frame's channels next to those of the frame before it, in one pass (the TCDecoder's MemBlock input).

A MemBlock's first conv reads ``cat(x[t], x[t - 1])`` over channels, where the frame before a group's
first frame is carried from the previous group (``past``). Built with PyTorch indexing that is three
strided copies into the two channel halves; on an H200 at 4K they ran at ~0.8 TB/s (1.34 ms for each
half of two 1088x1920x128 bf16 frames). This kernel reads each source pixel's channels once per half
and writes whole output pixels, for canonical channels-last frames.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_compat import FP_FUSION

ELEMENTS_PER_PROGRAM = 4096


@triton.jit
def _stack_with_previous_kernel(X, PAST, OUT, TOTAL, PIXELS, FRAMES, C,
                                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program = ``BLOCK_P`` consecutive pixels of the ``TOTAL = n * H * W`` pixels of ``X`` (``C``
    contiguous channels each, ``PIXELS = H * W`` per frame); frame ``f`` of ``X`` is frame
    ``f % FRAMES`` of batch entry ``f // FRAMES``, whose previous frame for ``f % FRAMES == 0`` is
    that entry's frame in ``PAST``."""
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    cs = tl.arange(0, BLOCK_C)
    frame = p // PIXELS
    first = frame % FRAMES == 0
    keep = (p < TOTAL)[:, None] & (cs < C)[None, :]
    current = tl.load(X + p[:, None] * C + cs[None, :], mask=keep)
    past_pixel = (frame // FRAMES) * PIXELS + p % PIXELS
    source = tl.where(first, PAST + past_pixel * C, X + (p - PIXELS) * C)
    previous = tl.load(source[:, None] + cs[None, :], mask=keep)
    out = OUT + p[:, None] * (2 * C) + cs[None, :]
    tl.store(out, current, mask=keep)
    tl.store(out + C, previous, mask=keep)


def canonical_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x (N, C, H, W)`` is stored as contiguous ``(N, H, W, C)``: each dimension longer than 1
    has its canonical stride (PyTorch's channels-last flag alone also accepts other batch strides)."""
    _, c, h, w = x.shape
    canonical = (h * w * c, 1, w * c, c)
    return all(size == 1 or stride == want for size, stride, want in zip(x.shape, x.stride(), canonical))


def stack_with_previous(x: torch.Tensor, past: torch.Tensor, batch: int) -> torch.Tensor:
    """``(batch * T, 2C, H, W)`` channels-last: frame ``i`` holds ``x[i]`` then the frame before it
    (``x[i - 1]`` within a batch entry, ``past[b]`` before entry ``b``'s first frame).

    ``x (batch * T, C, H, W)`` in batch-major frame order and ``past (batch, C, H, W)``, both canonical
    channels-last (:func:`canonical_channels_last`) with the same dtype and device."""
    n, c, h, w = x.shape
    if n % batch or tuple(past.shape) != (batch, c, h, w):
        raise ValueError(f"past {tuple(past.shape)} does not match {batch} entries of frames {tuple(x.shape)}")
    if not (canonical_channels_last(x) and canonical_channels_last(past)):
        raise ValueError("stack_with_previous needs canonical channels-last frames")
    if past.dtype != x.dtype or past.device != x.device:
        raise ValueError(f"past is {past.dtype} on {past.device}, the frames {x.dtype} on {x.device}")
    out = torch.empty((n, 2 * c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    total = n * h * w
    if total:
        block_c = triton.next_power_of_2(c)
        block_p = max(1, ELEMENTS_PER_PROGRAM // block_c)
        _stack_with_previous_kernel[(triton.cdiv(total, block_p),)](
            x, past, out, total, h * w, n // batch, c, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4, **FP_FUSION,
        )
    return out
