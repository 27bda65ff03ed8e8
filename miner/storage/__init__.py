"""Result storage: local files served by the miner (default) or S3-compatible object storage."""

from __future__ import annotations

from miner.config import MinerConfig
from miner.storage.base import Storage, new_key
from miner.storage.local import InvalidSignature, LocalStorage, StorageFull

__all__ = ["InvalidSignature", "LocalStorage", "Storage", "StorageFull", "make_storage", "new_key"]


def make_storage(config: MinerConfig) -> Storage:
    """The backend named by ``storage.backend``."""
    table = config.section("storage")
    common = {"expiry_s": int(table["url_expiry_s"]), "retention_s": int(table["retention_s"])}
    if table["backend"] == "s3":
        from miner.storage.s3 import S3Storage  # boto3 is imported only when S3 is configured

        s3 = table["s3"]
        return S3Storage(
            bucket=s3["bucket"], region=s3["region"], endpoint_url=s3["endpoint_url"],
            access_key_id=s3["access_key_id"], secret_access_key=s3["secret_access_key"],
            prefix=table["key_prefix"], **common,
        )
    local = table["local"]
    return LocalStorage(
        local["dir"], base_url=local["public_base_url"] or config.public_url, secret=local["secret"], **common,
    )
