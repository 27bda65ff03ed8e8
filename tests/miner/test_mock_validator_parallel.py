"""The mock validator makes and scores a round's clips in parallel (``round.workers``): the same files and
scores as one at a time, in clip order, and a failing clip named in the error. Tiny clips, real files."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp
import bittensor as bt
import pytest

from miner.mock_validator import metrics
from miner.mock_validator.clips import ClipError, bicubic_baseline, make_clips, map_clips
from miner.mock_validator.runner import MockValidator, RunOptions
from miner.mock_validator.scoring import Reference
from miner.mock_validator.serve import InputServer
from miner.mock_validator.settings import available_cores, load_settings, round_workers, task_geometry

SECONDS = 0.3  # 9 frames
TASK = "SD2HD"  # [small]: 160x90 -> 320x180


@pytest.fixture(scope="module")
def settings() -> dict:
    return load_settings(overrides={"metrics": {"vmaf": metrics.vmaf_available()}})


def _make(root: Path, settings: dict, workers: int, count: int = 3, **kwargs: Any) -> list[Reference]:
    root.mkdir(parents=True, exist_ok=True)
    return make_clips(root, root, task_geometry(settings, TASK, small=True), count, SECONDS, settings, seed=7,
                      workers=workers, **kwargs)


def test_parallel_clips_are_byte_identical_and_in_order(tmp_path: Path, settings: dict) -> None:
    one, two = _make(tmp_path / "w1", settings, 1), _make(tmp_path / "w2", settings, 2)
    assert [r.path.name for r in two] == ["clip00_ref.mp4", "clip01_ref.mp4", "clip02_ref.mp4"]
    assert [r.input_path.name for r in two] == ["clip00_in.mp4", "clip01_in.mp4", "clip02_in.mp4"]
    for a, b in zip(one, two):
        assert a.info == b.info and a.geometry == b.geometry
        assert a.path.read_bytes() == b.path.read_bytes(), f"{b.path.name} differs from the sequential one"
        assert a.input_path.read_bytes() == b.input_path.read_bytes(), f"{b.input_path.name} differs"
    assert one[0].path.read_bytes() != one[1].path.read_bytes(), "each clip has its own seed"


@pytest.mark.timeout(60)
def test_a_failing_clip_is_named_and_the_others_are_not(tmp_path: Path, settings: dict) -> None:
    (good,) = _make(tmp_path / "good", settings, 1, count=1)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ClipError, match=r"making clips failed for 1 of 2 clips .*src01_ref\.mp4: ") as info:
        _make(tmp_path / "round", settings, 2, count=2, sources=(good.path, bad), prefix="src")
    assert "src00" not in str(info.value)
    assert info.value.__cause__ is not None, "the clip's own exception is chained"


@pytest.mark.timeout(30)
def test_map_clips_reports_every_failure_and_keeps_clip_order() -> None:
    both_running = threading.Barrier(2, timeout=10)

    def job(i: int) -> int:
        if i < 2:
            both_running.wait()
            raise ValueError(f"boom {i}")
        return i

    with pytest.raises(ClipError) as info:
        map_clips(job, ["a", "b"], 2, "testing")
    assert "a: ValueError: boom 0" in str(info.value) and "b: ValueError: boom 1" in str(info.value)

    def slow_first(i: int) -> int:
        time.sleep(0.2 * (3 - i))
        return i

    assert map_clips(slow_first, ["a", "b", "c"], 3, "testing") == [0, 1, 2]


def test_round_workers() -> None:
    assert round_workers(3, 5) == 3 and round_workers(8, 5) == 5 and round_workers(1, 0) == 1
    assert round_workers(0, 5) == min(5, available_cores()) and round_workers(0, 5, validators=10_000) == 1
    with pytest.raises(ValueError, match="round.workers"):
        round_workers(-1, 5)


def _comparable(clip: Any) -> dict:
    """A ClipResult as a dict without its timings and the servers' ports (which vary from run to run)."""
    data = asdict(clip)
    data.pop("download_s")
    for key in ("input_url", "result_url"):
        data[key] = urlsplit(data[key]).path
    for key in ("score", "baseline"):
        if data[key]:
            data[key].pop("scoring_s")
    return data


async def _round(workdir: Path, settings: dict, wallet: bt.Wallet, workers: int) -> list:
    """Make two clips, serve a bicubic upscale of the first as its result (the second has none), collect."""
    (workdir / "inputs" / "results").mkdir(parents=True)
    opts = RunOptions(miner_url="http://127.0.0.1:9", miner_hotkey=wallet.hotkey.ss58_address, task=TASK, clips=2,
                      seconds=SECONDS, small=True, workers=workers)
    with InputServer(workdir / "inputs") as server:
        async with aiohttp.ClientSession() as session:
            validator = MockValidator(0, wallet, opts, settings, server, session, workdir)
            refs, urls = await validator._make(2, SECONDS, "r0_", seed=3)
            result = workdir / "inputs" / "results" / "r0_00_out.mp4"
            shutil.copy(bicubic_baseline(refs[0], settings), result)
            return await validator._collect(refs, urls, [server.url("results/r0_00_out.mp4"), ""], [], "refused")


def test_parallel_scoring_gives_the_sequential_results(tmp_path: Path, settings: dict,
                                                       make_wallet: Callable[[str], bt.Wallet]) -> None:
    wallet = make_wallet("parallel-scoring")
    one = asyncio.run(_round(tmp_path / "w1", settings, wallet, 1))
    two = asyncio.run(_round(tmp_path / "w2", settings, wallet, 2))
    assert [c.index for c in two] == [0, 1]
    assert two[0].score is not None and two[0].score.ok, two[0].score.failed()
    assert two[1].score is None and two[1].error == "refused"
    assert all(c.baseline is not None and c.baseline.ok for c in two)
    assert [_comparable(c) for c in one] == [_comparable(c) for c in two]
