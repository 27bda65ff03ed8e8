"""The storage contract: put a finished MP4, get a URL the validator can download."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Storage(Protocol):
    """Where results go. ``put`` returns a URL valid for the configured expiry."""

    name: str

    def put(self, path: Path, key: str) -> str:
        """Store the file at ``path`` under ``key`` and return a download URL."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object ``key`` (no error when it is already gone)."""
        ...

    def delete_expired(self) -> int:
        """Delete objects older than the retention; return how many were deleted."""
        ...


def new_key(prefix: str, suffix: str = ".mp4") -> str:
    """An unguessable object key under ``prefix`` (e.g. ``upscaling/20250101/3f2a...mp4``)."""
    day = time.strftime("%Y%m%d", time.gmtime())
    return f"{prefix}{day}/{secrets.token_hex(16)}{suffix}"
