"""Throughput calibration: estimates that follow the speed this machine actually delivers.

The throughput table (configs/throughput.toml) is measured on one GPU with one version of the code; a
miner on another GPU of the same class, another host CPU (the encoder runs there) or newer code runs
faster or slower. Each finished clip gives a ratio of its measured frames/s to the table's figure for
its variant and output size (tiled clips under their own name, ``tiny+tiled``: their speed is not the
untiled one's); the planner multiplies the table by a moving average of those ratios, so admission and
the LengthCheck answer converge on what the workers really do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class ThroughputCalibration:
    """Measured / table frames-per-second ratios per (variant, output width, output height).

    ``weight`` is the share of a new observation in the moving average (1: the last clip only);
    ratios are clamped to ``[min_factor, max_factor]`` so one odd clip cannot swing admission far.
    A size without observations of its own uses the smallest ratio seen for its variant (the cautious
    choice: a slow size predicts a slow machine), and 1 before any observation."""

    weight: float = 0.5
    min_factor: float = 0.25
    max_factor: float = 2.0
    _factors: dict[tuple[str, int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1:
            raise ValueError(f"calibration weight must be in (0, 1], got {self.weight}")
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise ValueError(f"calibration bounds must satisfy 0 < min <= 1 <= max, got "
                             f"[{self.min_factor}, {self.max_factor}]")

    def factor(self, variant: str, width: int, height: int) -> float:
        """The multiplier of the table's frames/s for this variant and output size."""
        exact = self._factors.get((variant, width, height))
        if exact is not None:
            return exact
        return min((f for (name, _, _), f in self._factors.items() if name == variant), default=1.0)

    def observe(self, variant: str, width: int, height: int, measured_fps: float, table_fps: float) -> float:
        """Fold one finished clip in; returns the updated factor."""
        if measured_fps <= 0 or table_fps <= 0:
            raise ValueError(f"frames/s must be positive (measured {measured_fps}, table {table_fps})")
        ratio = min(max(measured_fps / table_fps, self.min_factor), self.max_factor)
        key = (variant, width, height)
        previous = self._factors.get(key)
        updated = ratio if previous is None else previous + self.weight * (ratio - previous)
        self._factors[key] = updated
        log.info("throughput calibrated variant=%s size=%dx%d table_fps=%.2f measured_fps=%.2f factor=%.3f",
                 variant, width, height, table_fps, measured_fps, updated)
        return updated
