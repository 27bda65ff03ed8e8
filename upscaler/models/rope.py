"""3D rotary position embedding of Wan2.1, evaluated in fp32 real arithmetic.

The head dimension is split into time / height / width parts of ``D - 2*(D//3)``, ``D//3`` and
``D//3`` channels (interleaved pairs rotate together). The angles are computed in float64 exactly as
the reference (``precompute_freqs_cis``), then cos/sin are rounded to fp32 and the rotation runs in
fp32. The reference rotates in complex128; the two differ by fp32 rounding of cos/sin and of the
products (relative error ~1e-7, far below bf16 resolution), see ``tests/models/test_dit.py``.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0
ROPE_MAX_POSITIONS = 1024
# The streaming time offset grows by 2 latent frames per step. The reference's tables stop at 1024
# positions (about 4k frames); RoPE scores depend only on position differences, so we extend the
# time axis to cover clips of any practical length (2**16 latent frames, over an hour at 30 fps).
ROPE_MAX_TIME_POSITIONS = 1 << 16


def _axis_angles(dim: int, end: int, theta: float) -> torch.Tensor:
    """``(end, dim // 2)`` float64 angles ``pos * theta^(-2i/dim)``."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
    return torch.outer(torch.arange(end, dtype=torch.float64), inv)


class Rope3D:
    """Per-axis cos/sin tables (fp32, rounded from float64 angles); gathers them per token on device."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int = ROPE_MAX_POSITIONS,
        max_time_positions: int = ROPE_MAX_TIME_POSITIONS,
        theta: float = ROPE_THETA,
    ) -> None:
        third = head_dim // 3
        if third % 2:
            raise ValueError(f"head_dim {head_dim} does not split into even RoPE parts (head_dim // 3 must be even)")
        self.head_dim = head_dim
        angles = (
            _axis_angles(head_dim - 2 * third, max_time_positions, theta),
            _axis_angles(third, max_positions, theta),
            _axis_angles(third, max_positions, theta),
        )
        self._cpu = tuple((a.cos().float(), a.sin().float()) for a in angles)
        self._by_device: dict[torch.device, tuple[tuple[torch.Tensor, torch.Tensor], ...]] = {}

    def _tables(self, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        if device not in self._by_device:
            self._by_device[device] = tuple((c.to(device), s.to(device)) for c, s in self._cpu)
        return self._by_device[device]

    def tables(self, positions: torch.Tensor, time_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(L, 1, head_dim // 2)`` fp32 for tokens at ``positions`` ``(L, 3)`` (time + offset)."""
        cos_parts, sin_parts = [], []
        for axis, (cos, sin) in enumerate(self._tables(positions.device)):
            index = positions[:, axis] + time_offset if axis == 0 else positions[:, axis]
            cos_parts.append(cos[index])
            sin_parts.append(sin[index])
        return torch.cat(cos_parts, dim=-1).unsqueeze(1), torch.cat(sin_parts, dim=-1).unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ``(B, L, H, D)``; returns ``x.dtype``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
