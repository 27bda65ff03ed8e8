"""Results kept on the miner's disk and served by the miner at HMAC-signed, expiring URLs.

URL: ``{base}/files/{key}?exp={unix_seconds}&sig={hex}``, ``sig = HMAC-SHA256(secret, "{key}\\n{exp}")``.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

SECRET_FILE = ".url-secret"


class InvalidSignature(Exception):
    """A /files request whose signature is wrong, whose URL expired, or whose key is malformed."""


class StorageFull(OSError):
    """The result could not be stored: the storage directory's disk (or quota) is full."""


def load_or_create_secret(directory: Path, configured: str) -> bytes:
    """The configured secret, else the one persisted in ``directory``, else a new persisted one."""
    if configured:
        return configured.encode()
    path = directory / SECRET_FILE
    if path.exists():
        return path.read_bytes().strip()
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    log.info("generated a URL signing secret", extra={"fields": {"path": str(path)}})
    return secret


class LocalStorage:
    """Files under ``directory``; URLs signed with ``secret``, valid ``expiry_s`` seconds."""

    name = "local"

    def __init__(self, directory: str | os.PathLike[str], *, base_url: str, secret: str = "",
                 expiry_s: int = 3600, retention_s: int = 4200) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self.expiry_s = expiry_s
        self.retention_s = retention_s
        self._secret = load_or_create_secret(self.directory, secret)

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, key: str, *, now: float | None = None) -> str:
        """A URL for ``key`` expiring ``expiry_s`` from now."""
        expires = int((time.time() if now is None else now) + self.expiry_s)
        return f"{self.base_url}/files/{quote(key)}?exp={expires}&sig={self._signature(key, expires)}"

    def path_for(self, key: str) -> Path:
        """The file of ``key``; refuses keys that would leave the storage directory."""
        if not key or key.startswith("/") or ".." in Path(key).parts or key.startswith("."):
            raise InvalidSignature(f"malformed key {key!r}")
        path = (self.directory / key).resolve()
        if self.directory not in path.parents:
            raise InvalidSignature(f"malformed key {key!r}")
        return path

    def verify(self, key: str, exp: str, sig: str, *, now: float | None = None) -> Path:
        """Check a /files request; return the file path or raise ``InvalidSignature``."""
        try:
            expires = int(exp)
        except ValueError:
            raise InvalidSignature("exp is not a number") from None
        if not hmac.compare_digest(self._signature(key, expires).encode(), sig.encode("utf-8", "replace")):
            raise InvalidSignature("bad signature")
        if expires < (time.time() if now is None else now):
            raise InvalidSignature("URL expired")
        return self.path_for(key)

    def put(self, path: Path, key: str) -> str:
        """Move ``path`` into storage under ``key``; ``StorageFull`` when the disk is full.

        Across filesystems the file is copied to a hidden temporary name and renamed into place, so a
        copy cut short (no space left) leaves nothing under ``key``: no partial file is ever served.
        """
        target = self.path_for(key)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(path, partial)
                os.replace(partial, target)
                path.unlink(missing_ok=True)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                free = shutil.disk_usage(self.directory).free
                raise StorageFull(f"no space left in storage.local.dir {self.directory} ({free // 1024} KiB free) "
                                  "for this result: free disk space or lower storage.retention_s") from None
            raise
        return self.signed_url(key)

    def delete(self, key: str) -> None:
        """Delete the file of ``key`` (no error when it is already gone)."""
        self.path_for(key).unlink(missing_ok=True)

    def delete_expired(self) -> int:
        """Delete files older than the retention, and the directories they leave empty."""
        cutoff = time.time() - self.retention_s
        deleted = 0
        for file in self.directory.rglob("*"):
            if file.is_file() and file.name != SECRET_FILE and file.stat().st_mtime < cutoff:
                file.unlink(missing_ok=True)
                deleted += 1
        for folder in sorted((d for d in self.directory.rglob("*") if d.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        return deleted
