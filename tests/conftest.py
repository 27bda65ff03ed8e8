"""Shared fixtures: small random checkpoints written once per session in the official formats, and an
S3-compatible server on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from upscaler.weights import WeightFiles, write_random_checkpoints


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], WeightFiles]:
    """``small_checkpoints(version)`` -> the five files of the "small" preset for "v1" or "v1.1"
    (written on first use, read-only for tests: copy them before corrupting)."""
    written: dict[str, WeightFiles] = {}

    def get(version: str = "v1.1") -> WeightFiles:
        if version not in written:
            directory: Path = tmp_path_factory.mktemp(f"small-{version}")
            written[version] = write_random_checkpoints(directory, "small", version, seed=0)
        return written[version]

    return get


@pytest.fixture()
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback (its URL). Its state lives in this process, shared by every server
    started here, so the test's buckets and objects are reset when it ends."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield endpoint
    finally:
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10.0)
        server.stop()
