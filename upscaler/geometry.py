"""Output geometry: exact target size, padded internally to what the model needs."""

from __future__ import annotations

from dataclasses import dataclass


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Geometry:
    """Input size, exact output size, and the padded size the model runs at."""

    in_width: int
    in_height: int
    out_width: int
    out_height: int
    model_width: int
    model_height: int

    @classmethod
    def for_target(cls, in_size: tuple[int, int], out_size: tuple[int, int], multiple: int) -> "Geometry":
        """Run at ``out_size`` rounded up to ``multiple`` (FlashVSR windows are 128 px); crop back after."""
        (in_w, in_h), (out_w, out_h) = in_size, out_size
        for name, value in (("input width", in_w), ("input height", in_h), ("output width", out_w), ("output height", out_h)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        return cls(in_w, in_h, out_w, out_h, round_up(out_w, multiple), round_up(out_h, multiple))

    @classmethod
    def for_scale(cls, in_size: tuple[int, int], scale: int, multiple: int) -> "Geometry":
        """Upscale by an integer factor."""
        return cls.for_target(in_size, (in_size[0] * scale, in_size[1] * scale), multiple)

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.out_width, self.out_height)

    @property
    def model_size(self) -> tuple[int, int]:
        return (self.model_width, self.model_height)

    @property
    def out_pixels(self) -> int:
        return self.out_width * self.out_height
