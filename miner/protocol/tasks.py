"""Vidaio upscaling task types and their geometry (the single place these sizes live in code).

``UpscalingTask("SD24K").output_size == (3840, 2160)``; ``UpscalingTask.parse(name)`` raises a
``ValueError`` naming the known tasks for anything else.
"""

from __future__ import annotations

from enum import Enum


class UpscalingTask(str, Enum):
    """A Vidaio upscaling task: the wire name is the enum value."""

    SD2HD = "SD2HD"
    HD24K = "HD24K"
    SD24K = "SD24K"
    K4_TO_K8 = "4K28K"

    @classmethod
    def parse(cls, name: str) -> "UpscalingTask":
        """The task of a wire name; ``ValueError`` with the known names for anything else."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown task type {name!r} (known: {known})") from None

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the clip the validator sends."""
        return _GEOMETRY[self][0]

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) our output must have exactly."""
        return _GEOMETRY[self][1]

    @property
    def scale(self) -> int:
        """Linear upscale factor from input to output."""
        return self.output_size[0] // self.input_size[0]


# (input (w, h), output (w, h)) per task, as in Vidaio's validator.
_GEOMETRY: dict[UpscalingTask, tuple[tuple[int, int], tuple[int, int]]] = {
    UpscalingTask.SD2HD: ((960, 540), (1920, 1080)),
    UpscalingTask.HD24K: ((1920, 1080), (3840, 2160)),
    UpscalingTask.SD24K: ((960, 540), (3840, 2160)),
    UpscalingTask.K4_TO_K8: ((3840, 2160), (7680, 4320)),
}
