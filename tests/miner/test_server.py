"""The real miner process over real HTTP, fed bad input: every bad clip or request gets a clear status,
the good clip of the same round is still served, and the miner keeps serving the next request.

One miner subprocess (``python -m miner``, random-small weights, local storage, --no-chain allow-list)
serves the module; inputs come from a static HTTP server on loopback; requests are signed by real
wallets made in a temp dir, on both the legacy synapse route and btauth/1."""

from __future__ import annotations

import asyncio
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from miner.mock_validator import wallets
from miner.mock_validator.runner import make_client
from scripts.run_local import MINER_WALLET, free_port, miner_config, stop, wait_healthy
from tests.media import make_clip, make_corrupt, make_zero_frame
from upscaler.video import probe

pytestmark = pytest.mark.slow

MAX_DOWNLOAD = 2_000_000


class _Miner:
    def __init__(self, url: str, hotkey: str, inputs: str, root: Path, validator, outsider) -> None:
        self.url, self.hotkey, self.inputs, self.root = url, hotkey, inputs, root
        self.validator, self.outsider = validator, outsider


@pytest.fixture(scope="module")
def miner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Miner]:
    root = tmp_path_factory.mktemp("server")
    media = root / "media"
    media.mkdir()
    make_clip(media / "good.mp4", width=64, height=36, frames=9)
    make_clip(media / "giant.mp4", width=96, height=64, frames=2)  # over the frame-size cap set below
    make_corrupt(media / "corrupt.mp4")
    make_zero_frame(media / "empty.mp4")
    (media / "huge.mp4").write_bytes(bytes(MAX_DOWNLOAD + 1))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    validator = wallets.load_or_create(root / "wallets", "validator")
    outsider = wallets.load_or_create(root / "wallets", "outsider")
    hotkey = wallets.load_or_create(root / "wallets", MINER_WALLET).hotkey.ss58_address
    port = free_port()
    config = miner_config(root, port, "random-small", [validator.hotkey.ss58_address])
    text = config.read_text()  # small download and frame-size caps for the oversize cases (good.mp4 at the cap)
    config.write_text(text.replace("allow_private_urls = true", f"allow_private_urls = true\nmax_bytes = {MAX_DOWNLOAD}"
                                                                f"\nmax_frame_pixels = {64 * 36}"))
    log = (root / "miner.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "miner", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", proc, 300)
        yield _Miner(url, hotkey, f"http://127.0.0.1:{httpd.server_address[1]}", root, validator, outsider)
    finally:
        status = stop(proc)  # uvicorn re-raises SIGTERM once its shutdown completed
        httpd.shutdown()
        log.close()
        assert status in (0, -15) and '"miner stopped"' in (root / "miner.log").read_text(), "graceful shutdown"


def _round(miner: _Miner, transport: str, urls: list[str], task: str = "SD2HD", wallet=None):
    async def go():
        async with aiohttp.ClientSession() as session:
            client = make_client(transport, session, miner.url, wallet or miner.validator, miner.hotkey)
            return await client.upscale(urls, task, max_size_mb=50, round_id=f"r-{transport}", timeout=120)

    return asyncio.run(go())


def _fetch(url: str, dest: Path) -> Path:
    async def go():
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            dest.write_bytes(await resp.read())

    asyncio.run(go())
    return dest


@pytest.mark.parametrize("transport", ["legacy", "btauth"])
def test_bad_clips_fail_alone_and_the_good_one_is_served(miner: _Miner, transport: str, tmp_path: Path) -> None:
    names = ["good", "corrupt", "empty", "huge", "giant"]
    urls = [f"{miner.inputs}/{n}.mp4" for n in names] + [f"http://127.0.0.1:{free_port()}/gone.mp4"]
    answer = _round(miner, transport, urls)
    assert answer.status == 200, answer.message
    assert answer.urls[0] and not any(answer.urls[1:]), answer.urls
    info = probe(_fetch(answer.urls[0], tmp_path / "out.mp4"))
    assert (info.width, info.height, info.frames, info.codec) == (128, 72, 9, "hevc")
    if transport == "btauth":  # the JSON routes carry a reason per clip
        kinds = [e.split(":")[0] for e in answer.errors]
        assert kinds == ["", "input_error", "input_error", "download_too_large", "input_error",
                         "download_unreachable"], answer.errors
        assert "96x64: more than the 2304 pixels allowed per frame" in answer.errors[4], answer.errors


def test_unknown_task_type_is_a_clear_400(miner: _Miner) -> None:
    answer = _round(miner, "btauth", [f"{miner.inputs}/good.mp4"], task="SD2XXL")
    assert answer.status == 400 and "unknown task type" in answer.message


@pytest.mark.parametrize("transport", ["legacy", "btauth"])
def test_caller_outside_the_allow_list_is_refused_before_any_work(miner: _Miner, transport: str) -> None:
    answer = _round(miner, transport, [f"{miner.inputs}/good.mp4"], wallet=miner.outsider)
    assert answer.status == 403, (answer.status, answer.message)


def test_still_serving_after_everything(miner: _Miner, tmp_path: Path) -> None:
    answer = _round(miner, "legacy", [f"{miner.inputs}/good.mp4"])
    assert answer.status == 200 and answer.urls[0]
