"""FlashVSR's streaming chunk schedule expressed in input/output frame indices.

The model works on latent frames (4 video frames each, causal). Step 0 denoises 6 latent frames
and, once decoded, finalises output frames [0, 21); every later step denoises 2 latent frames and
finalises the next 8 output frames. The LQ projection reads 4 frames ahead of the output: step 0
consumes LQ frames [0, 25) in calls of 1 then 4 frames, step i consumes [8i+17, 8i+25).
Output frame k corresponds to input frame k, so an N-frame clip needs ``steps_for(N)`` steps and
``lq_frames_needed(steps)`` LQ frames; frames past the end of the clip are replicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIRST_STEP_LATENTS = 6
NEXT_STEP_LATENTS = 2
FIRST_STEP_OUTPUT = 21
NEXT_STEP_OUTPUT = 8
LQ_LOOKAHEAD = 4
LQ_CALL_FRAMES = 4


@dataclass(frozen=True)
class Step:
    """One streaming step: which LQ frames feed the projection and which output frames it finalises."""

    index: int
    lq_calls: tuple[tuple[int, int], ...]
    latent_frames: int
    output: tuple[int, int]

    @property
    def lq_end(self) -> int:
        """One past the last LQ frame this step reads."""
        return self.lq_calls[-1][1]


def steps_for(num_frames: int) -> int:
    """Number of streaming steps needed to produce ``num_frames`` output frames (>= 1)."""
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if num_frames <= FIRST_STEP_OUTPUT:
        return 1
    return 1 + math.ceil((num_frames - FIRST_STEP_OUTPUT) / NEXT_STEP_OUTPUT)


def step(index: int) -> Step:
    """The schedule of step ``index``."""
    if index == 0:
        calls = [(0, 1)]
        start = 1
        while start + LQ_CALL_FRAMES <= FIRST_STEP_OUTPUT + LQ_LOOKAHEAD:
            calls.append((start, start + LQ_CALL_FRAMES))
            start += LQ_CALL_FRAMES
        return Step(0, tuple(calls), FIRST_STEP_LATENTS, (0, FIRST_STEP_OUTPUT))
    out_start = FIRST_STEP_OUTPUT + NEXT_STEP_OUTPUT * (index - 1)
    out_end = out_start + NEXT_STEP_OUTPUT
    lq_start = out_start + LQ_LOOKAHEAD
    calls = tuple(
        (lq_start + k * LQ_CALL_FRAMES, lq_start + (k + 1) * LQ_CALL_FRAMES)
        for k in range(NEXT_STEP_OUTPUT // LQ_CALL_FRAMES)
    )
    return Step(index, calls, NEXT_STEP_LATENTS, (out_start, out_end))


def lq_frames_needed(num_steps: int) -> int:
    """LQ frames read by ``num_steps`` steps (the clip is padded by replication up to this)."""
    return step(num_steps - 1).lq_end
