"""What one upscale produced and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class Progress:
    """Progress of a running upscale, passed to progress callbacks."""

    frames_done: int
    frames_total: int
    elapsed_s: float

    @property
    def frames_per_second(self) -> float:
        return self.frames_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        fps = self.frames_per_second
        return (self.frames_total - self.frames_done) / fps if fps > 0 and self.frames_total else None


@dataclass
class UpscaleReport:
    """Frames, sizes, variant, seconds per stage, throughput and peak GPU memory of one upscale."""

    frames: int
    fps: Fraction
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    variant: str
    tiled: bool
    weights_label: str
    seconds: dict[str, float] = field(default_factory=dict)
    peak_vram_bytes: int = 0
    tiles: int = 1
    tile_width: int = 0
    tile_height: int = 0
    """Tiles of a tiled run and their size in output pixels (the largest; 0 when untiled)."""

    @property
    def frames_per_second(self) -> float:
        total = self.seconds.get("total", 0.0)
        return self.frames / total if total > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (fps as a string fraction, derived fields included)."""
        data = asdict(self)
        data["fps"] = str(self.fps)
        data["frames_per_second"] = round(self.frames_per_second, 3)
        data["peak_vram_gib"] = round(self.peak_vram_bytes / GIB, 3)
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return data

    def summary(self) -> str:
        """The one-line result operators read."""
        stages = " ".join(f"{k}={v:.2f}s" for k, v in self.seconds.items() if k != "total")
        return (
            f"frames={self.frames} size={self.in_size[0]}x{self.in_size[1]}->{self.out_size[0]}x{self.out_size[1]} "
            f"variant={self.variant}{' tiled' if self.tiled else ''} weights={self.weights_label} "
            f"seconds={self.seconds.get('total', 0.0):.2f} fps={self.frames_per_second:.2f} "
            f"peak_vram_gib={self.peak_vram_bytes / GIB:.2f} {stages}"
        )
