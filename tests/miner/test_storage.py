"""Storage backends for real: local signed URLs served over HTTP, S3 against moto's server on loopback."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from miner.auth import BtAuth, LegacyAuth
from miner.chain import StaticAllowList
from miner.config import load_miner_config
from miner.metrics import MinerMetrics
from miner.server.files import files_router
from miner.server.gate import Gate
from miner.server.limits import OpsAccess, ServerLimits
from miner.storage import LocalStorage, make_storage, new_key
from miner.storage.s3 import S3Storage

PAYLOAD = os.urandom(4096)


class _ThreadedServer:
    """A uvicorn server for ``app`` on 127.0.0.1 (random port) in a thread."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def serving_files(storage: LocalStorage, app: FastAPI | None = None, ops: OpsAccess = OpsAccess(allow=())) -> FastAPI:
    """``app`` (a new one by default) serving ``storage``'s files as the miner does: the route behind the gate,
    which verifies each URL (no validator is admitted; ``ops`` may read /health and /metrics)."""
    app = app or FastAPI()
    nobody = StaticAllowList([], stake=0.0)
    app.add_middleware(Gate, legacy=LegacyAuth("miner", nobody), btauth=BtAuth("miner", nobody), limits=ServerLimits(),
                       ops=ops, metrics=MinerMetrics(), files_check=storage.verify)
    app.include_router(files_router())
    return app


def _result(tmp_path: Path) -> Path:
    path = tmp_path / "out.mp4"
    path.write_bytes(PAYLOAD)
    return path


def test_local_signed_urls_over_http(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", base_url="http://placeholder", expiry_s=60)
    with _ThreadedServer(serving_files(storage)) as base:
        storage.base_url = base
        url = storage.put(_result(tmp_path), new_key("upscaling/"))
        assert url.startswith(f"{base}/files/upscaling/")
        ok = httpx.get(url)
        assert ok.status_code == 200 and ok.content == PAYLOAD
        assert ok.headers["content-type"] == "video/mp4"

        tampered = url.replace("sig=", "sig=0") [:-1]
        assert httpx.get(tampered).status_code == 403
        other_key = url.replace("/files/upscaling/", "/files/upscaling/x")
        assert httpx.get(other_key).status_code == 403

        storage.expiry_s = -1
        expired = storage.put(_result(tmp_path), new_key("upscaling/"))
        response = httpx.get(expired)
        assert response.status_code == 403 and "expired" in response.text

        escape = httpx.get(f"{base}/files/..%2F..%2Fetc%2Fpasswd?exp=9999999999&sig=00")
        assert escape.status_code in (403, 404)
        assert httpx.get(f"{base}/files/upscaling/x.mp4?exp=9999999999&sig=%C3%A9").status_code == 403  # not a 500

        storage.expiry_s = 60
        url = storage.put(_result(tmp_path), new_key("upscaling/"))
        head = httpx.head(url)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(PAYLOAD)
        part = httpx.get(url, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == PAYLOAD[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(PAYLOAD)}"
        assert httpx.get(url, headers={"Range": f"bytes={len(PAYLOAD) + 10}-"}).status_code == 416
        assert httpx.get(url, headers={"Range": "bytes=junk"}).status_code in (200, 400)


@pytest.mark.parametrize("key", ["upscaling/a%41.mp4", "upscaling/a%2Fb.mp4"])
def test_a_signed_url_is_verified_once_for_the_key_it_was_signed_for(tmp_path: Path, key: str) -> None:
    """The key is the URL's path decoded once (by the server), as it was quoted when signed: a second unquote in
    the gate turned ``a%41`` into ``aA`` and ``a%2Fb`` into the directory path ``a/b``, whose signatures fail."""
    storage = LocalStorage(tmp_path / "files", base_url="http://placeholder", expiry_s=60)
    checked: list[str] = []
    verify = storage.verify
    storage.verify = lambda key, exp, sig: checked.append(key) or verify(key, exp, sig)  # type: ignore[method-assign]
    with _ThreadedServer(serving_files(storage)) as base:
        storage.base_url = base
        url = storage.put(_result(tmp_path), key)
        assert "%25" in url
        ok = httpx.get(url)
        assert ok.status_code == 200 and ok.content == PAYLOAD, ok.text
    assert checked == [key]  # verified once, by the gate: the route serves the file it hands on


def test_local_secret_is_persisted(tmp_path: Path) -> None:
    first = LocalStorage(tmp_path, base_url="http://m")
    second = LocalStorage(tmp_path, base_url="http://m")
    url = first.signed_url("upscaling/a.mp4")
    exp, sig = url.split("?", 1)[1].replace("exp=", "").split("&sig=")
    assert second.verify("upscaling/a.mp4", exp, sig) == (tmp_path / "upscaling/a.mp4").resolve()


def test_local_delete_expired(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", base_url="http://m", retention_s=100)
    storage.put(_result(tmp_path), "upscaling/old.mp4")
    storage.put(_result(tmp_path), "upscaling/new.mp4")
    old = tmp_path / "files/upscaling/old.mp4"
    os.utime(old, (time.time() - 200, time.time() - 200))
    assert storage.delete_expired() == 1
    assert not old.exists() and (tmp_path / "files/upscaling/new.mp4").exists()


def test_s3_presigned_url_and_expiry(tmp_path: Path, moto_endpoint: str) -> None:
    env = {
        "MINER_STORAGE_S3_BUCKET_NAME": "results",
        "MINER_STORAGE_S3_ENDPOINT_URL": moto_endpoint,
        "MINER_STORAGE_S3_REGION": "us-east-1",
        "MINER_STORAGE_S3_ACCESS_KEY_ID": "testing",
        "MINER_STORAGE_S3_SECRET_ACCESS_KEY": "testing",
        "MINER_STORAGE_S3_PRESIGNED_EXPIRY": "600",
        "FLASHVSR_MINER_STORAGE_BACKEND": "s3",
        "FLASHVSR_MINER_STORAGE_RETENTION_S": "600",
    }
    config = load_miner_config(environ=env)
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="results")
    storage = make_storage(config)
    assert isinstance(storage, S3Storage) and storage.expiry_s == 600

    url = storage.put(_result(tmp_path), new_key("upscaling/"))
    assert url.startswith(moto_endpoint) and "X-Amz-Signature" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == PAYLOAD

    assert storage.delete_expired() == 0
    storage.retention_s = 0
    time.sleep(1.1)  # S3 timestamps have one-second resolution
    assert storage.delete_expired() == 1
    assert httpx.get(url).status_code == 404
