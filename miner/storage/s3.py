"""Results uploaded to S3-compatible storage (AWS, Backblaze B2, MinIO, ...) with presigned GET URLs."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

log = logging.getLogger(__name__)

MAX_PRESIGN_S = 7 * 24 * 3600  # S3's signature V4 limit


class S3Storage:
    """One bucket; objects under ``prefix``; URLs presigned for ``expiry_s`` seconds."""

    name = "s3"

    def __init__(self, *, bucket: str, region: str = "us-east-1", endpoint_url: str = "",
                 access_key_id: str = "", secret_access_key: str = "", prefix: str = "upscaling/",
                 expiry_s: int = 3600, retention_s: int = 4200) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.expiry_s = min(expiry_s, MAX_PRESIGN_S)
        self.retention_s = retention_s
        self._client = boto3.client(
            "s3",
            region_name=region or "us-east-1",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=BotoConfig(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        )

    def put(self, path: Path, key: str) -> str:
        """Upload ``path`` (multipart when large) and return a presigned GET URL."""
        self._client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": "video/mp4"})
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expiry_s,
        )

    def delete(self, key: str) -> None:
        """Delete the object ``key`` (S3 answers success for a missing key too)."""
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def delete_expired(self) -> int:
        """Delete objects under ``prefix`` last modified before the retention window."""
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self.retention_s)
        stale: list[dict[str, str]] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            stale += [{"Key": obj["Key"]} for obj in page.get("Contents", []) if obj["LastModified"] < cutoff]
        for start in range(0, len(stale), 1000):
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": stale[start:start + 1000], "Quiet": True})
        return len(stale)
