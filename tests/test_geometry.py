"""Exact output geometry with internal padding to the model's 128 px windows."""

import pytest

from upscaler.geometry import Geometry, round_up


@pytest.mark.parametrize(
    "in_size,out_size,model",
    [((960, 540), (1920, 1080), (1920, 1152)), ((960, 540), (3840, 2160), (3840, 2176)),
     ((333, 187), (666, 374), (768, 384)), ((1920, 1080), (3840, 2160), (3840, 2176))],
)
def test_model_size_is_output_rounded_up(in_size, out_size, model) -> None:
    g = Geometry.for_target(in_size, out_size, 128)
    assert g.out_size == out_size
    assert g.model_size == model


def test_scale_and_validation() -> None:
    assert Geometry.for_scale((320, 180), 2, 128).out_size == (640, 360)
    assert round_up(129, 128) == 256 and round_up(128, 128) == 128
    with pytest.raises(ValueError, match="output width"):
        Geometry.for_target((10, 10), (0, 20), 128)
