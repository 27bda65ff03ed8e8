"""Result storage round trip: write a small object, fetch it through its signed URL, delete it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from miner.config import MinerConfig
from miner.doctor.result import CheckResult, DoctorContext
from miner.storage import LocalStorage, Storage, make_storage, new_key

NAME = "storage"
PAYLOAD_BYTES = 1024
FETCH_TIMEOUT_S = 10.0

Fetch = Callable[[Storage, str], tuple[bytes, str]]
"""Reads an object back through the URL ``put`` returned; also says how (for the detail)."""


def storage_round_trip(config: MinerConfig, fetch: Fetch | None = None) -> CheckResult:
    """Put ``PAYLOAD_BYTES`` random bytes, read them back with ``fetch`` (when given), delete them.

    Without ``fetch`` this is the cheap start-up check: wrong S3 credentials, a missing bucket or an
    unwritable directory fail here, before any worker loads."""
    try:
        storage = make_storage(config)
    except OSError as exc:
        return _local_failure(config, exc)
    key = new_key(config.get("storage.key_prefix") + "doctor/", ".bin")
    payload = os.urandom(PAYLOAD_BYTES)
    with tempfile.TemporaryDirectory(prefix="flashvsr-doctor-") as tmp:
        source = Path(tmp) / "probe.bin"
        source.write_bytes(payload)
        try:
            url = storage.put(source, key)
        except OSError as exc:
            return _local_failure(config, exc)
        except Exception as exc:  # boto3/botocore errors: classified by their S3 error code
            return _s3_failure(config, "write", exc)
    result = _read_back(storage, key, url, payload, fetch, config)
    try:
        storage.delete(key)
    except OSError as exc:
        return _local_failure(config, exc)
    except Exception as exc:
        return _s3_failure(config, "delete", exc)
    return result


def _read_back(storage: Storage, key: str, url: str, payload: bytes, fetch: Fetch | None,
               config: MinerConfig) -> CheckResult:
    if fetch is None:
        return CheckResult.ok(NAME, f"{storage.name}: wrote and deleted a test object")
    try:
        body, how = fetch(storage, url)
    except Exception as exc:
        return CheckResult.fail(NAME, f"{storage.name}: wrote {key} but could not read it back through its URL "
                                      f"{url.split('?')[0]}: {type(exc).__name__}: {exc}", _fetch_fix(config))
    if body != payload:
        return CheckResult.fail(NAME, f"{storage.name}: the URL of {key} answered {len(body)} bytes that are not "
                                      "the object written", _fetch_fix(config))
    return CheckResult.ok(NAME, f"{storage.name}: wrote, fetched through the signed URL ({how}) and deleted "
                                "a test object")


def fetch_over_http(storage: Storage, url: str) -> tuple[bytes, str]:
    """GET the URL (S3's presigned URL, or the miner's ``/files`` route while it serves)."""
    response = httpx.get(url, timeout=FETCH_TIMEOUT_S)
    response.raise_for_status()
    return response.content, f"HTTP {response.status_code} from {urlsplit(url).netloc}"


def verify_local(storage: Storage, url: str) -> tuple[bytes, str]:
    """For the local backend while the miner is not serving: check the URL's signature with the same code
    the ``/files`` route runs, and read the file it names."""
    assert isinstance(storage, LocalStorage)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    key = unquote(parts.path.split("/files/", 1)[1])
    path = storage.verify(key, query["exp"][0], query["sig"][0])
    return path.read_bytes(), "signature verified locally; the miner is not serving"


def check_storage(context: DoctorContext) -> CheckResult:
    """The configured backend's round trip; the local backend is fetched over HTTP only while the miner serves."""
    local = context.config.get("storage.backend") == "local"
    fetch = verify_local if local and not context.found.get("miner_running") else fetch_over_http
    return storage_round_trip(context.config, fetch)


def _local_failure(config: MinerConfig, exc: BaseException) -> CheckResult:
    directory = config.get("storage.local.dir")
    return CheckResult.fail(NAME, f"local: cannot write results under {directory}: {type(exc).__name__}: {exc}",
                            f"make {directory} writable by this user, or set storage.local.dir")


def _s3_code(exc: BaseException) -> str:
    """The S3 error code of ``exc`` or of the botocore error it wraps (boto3's upload errors wrap it)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        seen = seen.__cause__ or seen.__context__
    for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "NoSuchBucket"):
        if code in str(exc):
            return code
    return type(exc).__name__


def _s3_failure(config: MinerConfig, action: str, exc: BaseException) -> CheckResult:
    s3 = config.section("storage")["s3"]
    where = f"bucket {s3['bucket']!r} at {s3['endpoint_url'] or 'AWS S3'}"
    code = _s3_code(exc)
    if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "NoCredentialsError", "PartialCredentialsError"):
        return CheckResult.fail(NAME, f"s3: the storage credentials were rejected ({code}) by {where}",
                                "set storage.s3.access_key_id and storage.s3.secret_access_key (or "
                                "MINER_STORAGE_S3_ACCESS_KEY_ID / MINER_STORAGE_S3_SECRET_ACCESS_KEY) to a valid key "
                                "pair of that account")
    if code in ("AccessDenied", "Forbidden", "403"):
        return CheckResult.fail(NAME, f"s3: access denied to {action} in {where}",
                                "allow this key s3:PutObject, s3:GetObject, s3:DeleteObject and s3:ListBucket on "
                                "the bucket")
    if code in ("NoSuchBucket", "404"):
        return CheckResult.fail(NAME, f"s3: {where} does not exist",
                                "create the bucket, or set storage.s3.bucket (MINER_STORAGE_S3_BUCKET_NAME)")
    return CheckResult.fail(NAME, f"s3: cannot {action} a test object in {where}: {code}: {exc}",
                            "check storage.s3.endpoint_url, storage.s3.region and this machine's network access "
                            "to the endpoint")


def _fetch_fix(config: MinerConfig) -> str:
    if config.get("storage.backend") == "s3":
        return ("the presigned URL must be readable from outside: check storage.s3.endpoint_url (the public "
                "endpoint, not an internal one) and storage.s3.region")
    return ("local URLs are built from storage.local.public_base_url or server.public_url: set it to the address "
            "validators reach this miner at")
