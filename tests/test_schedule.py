"""The chunk schedule yields exactly one output frame per input frame, in order."""

import pytest

from upscaler import schedule


@pytest.mark.parametrize("frames", [1, 5, 20, 21, 22, 29, 30, 90, 150, 300, 301])
def test_steps_cover_every_frame_once(frames: int) -> None:
    steps = [schedule.step(i) for i in range(schedule.steps_for(frames))]
    covered = [k for s in steps for k in range(*s.output)]
    assert covered[:frames] == list(range(frames))
    assert len(covered) - frames < schedule.NEXT_STEP_OUTPUT or len(steps) == 1


def test_lq_calls_are_contiguous_and_look_ahead_four_frames() -> None:
    calls = [c for i in range(5) for c in schedule.step(i).lq_calls]
    assert calls[0] == (0, 1)
    for (_, end), (start, _) in zip(calls, calls[1:]):
        assert start == end
    for i in range(5):
        s = schedule.step(i)
        assert s.lq_end == s.output[1] + schedule.LQ_LOOKAHEAD
    assert schedule.step(0).latent_frames == 6 and schedule.step(3).latent_frames == 2


def test_reference_counts() -> None:
    # FlashVSR: step 0 reads 25 LQ frames and finalises 21; each later step 8 more.
    assert schedule.lq_frames_needed(1) == 25
    assert schedule.lq_frames_needed(3) == 41
    assert schedule.steps_for(300) == 36  # 21 + 35 * 8 = 301 >= 300
    with pytest.raises(ValueError):
        schedule.steps_for(0)
