"""A result disk that fills up during a round: the miner's local storage on a small real filesystem (a
tmpfs mounted for the test; skipped where mounting is not permitted). The clip whose result does not fit
fails with a clear reason, the others are served, and nothing partial is left or served."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from miner.mock_validator.runner import make_client
from tests.media import make_clip
from tests.miner.security_miner import media_server, running_miner
from upscaler.video import probe

pytestmark = pytest.mark.slow

PAGE = 4096


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_leaving(directory: Path, free_bytes: int) -> None:
    """Write a filler file so that ``free_bytes`` remain free on ``directory``'s filesystem."""
    filler = directory / "filler"
    with filler.open("wb") as handle:
        handle.write(bytes(max(0, shutil.disk_usage(directory).free - free_bytes)))
    assert abs(shutil.disk_usage(directory).free - free_bytes) <= PAGE


def test_full_result_disk_fails_only_the_clip_that_does_not_fit(tmp_path: Path, small_disk: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    make_clip(media / "small0.mp4", width=64, height=36, frames=9)    # ~6 KB of HEVC out (random weights)
    make_clip(media / "big.mp4", width=256, height=144, frames=24)    # ~28 KB out: more than the disk has
    make_clip(media / "small1.mp4", width=64, height=36, frames=9)
    storage = small_disk / "files"
    with media_server(media) as inputs, running_miner(tmp_path, validators=1, storage_dir=storage) as miner:
        _fill_leaving(small_disk, 5 * PAGE)

        async def go():
            async with aiohttp.ClientSession() as session:
                client = make_client("btauth", session, miner.url, miner.validators[0], miner.hotkey)
                answer = await client.upscale([f"{inputs}/{n}.mp4" for n in ("small0", "big", "small1")], "SD2HD",
                                              max_size_mb=50, round_id="disk-full", timeout=120)
                fetched = []
                for i, url in enumerate(answer.urls):
                    if url:
                        async with session.get(url) as resp:
                            assert resp.status == 200
                            (tmp_path / f"out{i}.mp4").write_bytes(await resp.read())
                            fetched.append(tmp_path / f"out{i}.mp4")
                return answer, fetched

        answer, fetched = asyncio.run(go())
        assert answer.status == 200, answer
        assert bool(answer.urls[0]) and not answer.urls[1] and bool(answer.urls[2]), answer.urls
        assert answer.errors[1].startswith("upload_error") and "no space left in storage.local.dir" in answer.errors[1]
        assert "free disk space or lower storage.retention_s" in answer.errors[1]
        for path in fetched:  # what is served is whole
            assert probe(path).frames == 9
        stored = [p for p in storage.rglob("*") if p.is_file() and p.name != ".url-secret"]
        assert len(stored) == 2 and not [p for p in stored if p.name.endswith(".part")], stored
