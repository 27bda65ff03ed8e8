"""A finished clip leaves no tensors in reference cycles.

In a long-lived miner, a tensor held by a cycle is released only when Python's cyclic collector
happens to run; on a GPU that is device memory kept per finished clip (a recursive local closure in
the decoder's frame grouping once kept the TCDecoder's stream state: ~2.6 GiB per 4K clip, growing
clip after clip). Each run here happens with the collector off, then every unreachable object is
inspected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from tests.media import make_clip, make_corrupt
from upscaler.api import Upscaler
from upscaler.errors import InputVideoError
from upscaler.settings import TilingSettings, load_settings


@pytest.fixture(scope="module")
def upscaler(small_checkpoints) -> Upscaler:
    files = small_checkpoints("v1.1")
    return Upscaler.load(load_settings(weights=str(files.dit.parent), model_preset="small", device="cpu"))


@contextmanager
def tensors_left_in_cycles() -> Iterator[list[tuple[int, ...]]]:
    """Yield a list that, after the block, holds the shapes of tensors found only in unreachable cycles."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    found: list[tuple[int, ...]] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found += [tuple(o.shape) for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize(("variant", "tiling"), [("tiny", None), ("full", None), ("tiny-long", None),
                                                 ("tiny", TilingSettings(tile_size=128, tile_overlap=64))])
def test_upscale_leaves_no_tensor_cycles(upscaler, tmp_path, variant, tiling):
    src = make_clip(tmp_path / "in.mp4", width=96, height=64, frames=13)
    base = upscaler.settings
    try:
        if tiling is not None:
            upscaler.settings = replace(base, tiling=tiling)
        with tensors_left_in_cycles() as leftover:
            upscaler.upscale_file(src, tmp_path / "out.mp4", scale=2, variant=variant)
    finally:
        upscaler.settings = base
    assert leftover == []


def test_failed_upscale_leaves_no_tensor_cycles(upscaler, tmp_path):
    with tensors_left_in_cycles() as leftover:
        with pytest.raises(InputVideoError):
            upscaler.upscale_file(make_corrupt(tmp_path / "bad.mp4"), tmp_path / "out.mp4", scale=2)
    assert leftover == []
