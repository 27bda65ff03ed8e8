"""The low-quality (LQ) frame window: decoded input frames at model size, on the device.

The engine addresses LQ frames by absolute index. Frames are pulled lazily from a batch source
(bicubic-resized to the output size, padded to the model size, scaled to [-1, 1]); indices past the
end of the clip repeat its last frame, which is how the schedule is padded in time. Frames the
schedule no longer needs are released, so memory is bounded by the step, not the clip.
"""

from __future__ import annotations

from typing import Iterator

import torch

from upscaler.errors import InputVideoError


class LQFrames:
    """Sliding, lazily filled window of model-input frames ``(1, 3, t, H, W)``."""

    def __init__(self, batches: Iterator[torch.Tensor]) -> None:
        self._batches = batches
        self._chunks: list[torch.Tensor] = []  # each (1, 3, t, H, W)
        self._first = 0  # absolute index of the first retained frame
        self._available = 0  # absolute index one past the last decoded frame
        self._exhausted = False

    @property
    def clip_frames(self) -> int | None:
        """Number of frames in the clip, known once the source is exhausted."""
        return self._available if self._exhausted else None

    def _fill(self, end: int) -> None:
        while self._available < end and not self._exhausted:
            batch = next(self._batches, None)
            if batch is None:
                self._exhausted = True
                break
            self._chunks.append(batch)
            self._available += batch.shape[2]
        if self._exhausted and self._available == 0:
            raise InputVideoError("the input video has no decodable frames")

    def get(self, start: int, end: int) -> torch.Tensor:
        """Frames ``[start, end)``; indices past the clip's end repeat its last frame."""
        if start < self._first:
            raise IndexError(f"LQ frame {start} was already released (first kept: {self._first})")
        self._fill(end)
        window = torch.cat(self._chunks, dim=2) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [window]
        lo, hi = start - self._first, min(end, self._available) - self._first
        frames = window[:, :, lo:hi] if hi > lo else window[:, :, -1:][:, :, :0]
        missing = end - max(start, self._available)
        if missing > 0:
            tail = window[:, :, -1:].expand(-1, -1, missing, -1, -1)
            frames = torch.cat([frames, tail], dim=2)
        return frames

    def release_before(self, index: int) -> None:
        """Drop frames before ``index`` (the last decoded frame is always kept for padding)."""
        self._fill(index)
        if not self._chunks:
            return
        window = torch.cat(self._chunks, dim=2) if len(self._chunks) > 1 else self._chunks[0]
        drop = min(index, self._available - 1) - self._first
        if drop > 0:
            window = window[:, :, drop:].clone()
            self._first += drop
        self._chunks = [window]
