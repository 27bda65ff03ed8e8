"""Downloading the validator's clips: streamed to disk, size-capped, only to public http(s) hosts.

Each hop of a redirect chain is checked again (scheme, host). Host names are resolved by a guarded
resolver, so the addresses checked are the addresses connected to (no DNS rebinding between check
and connect); IP-literal hosts are checked before the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

log = logging.getLogger(__name__)

REDIRECT_STATUSES = {301, 302, 303, 307, 308}


class FetchError(Exception):
    """A download failed; ``kind`` is a short machine-readable reason used in logs and metrics."""

    kind = "fetch_error"


class UnsupportedScheme(FetchError):
    kind = "unsupported_scheme"


class ForbiddenTarget(FetchError):
    kind = "forbidden_target"


class TooLarge(FetchError):
    kind = "too_large"


class TooManyRedirects(FetchError):
    kind = "too_many_redirects"


class Unreachable(FetchError):
    kind = "unreachable"


class BadStatus(FetchError):
    kind = "bad_status"


class FetchTimeout(FetchError):
    kind = "timeout"


@dataclass(frozen=True)
class FetchSettings:
    """Limits of one download (the ``[fetch]`` table)."""

    max_bytes: int = 500 * 1024 * 1024
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    max_redirects: int = 5
    allow_private_urls: bool = False
    chunk_bytes: int = 1024 * 1024
    max_frame_pixels: int = 4096 * 2176  # a downloaded clip's frames may hold this many pixels (checked before decoding)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "FetchSettings":
        return cls(**dict(table))


@dataclass(frozen=True)
class FetchResult:
    """A finished download."""

    url: str
    final_url: str
    path: Path
    bytes: int
    seconds: float


def forbidden_reason(address: str) -> str | None:
    """Why ``address`` is not a public target (loopback, private, ...), or None when it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{label}"):
            return f"{address} is a {label.replace('_', '-')} address"
    if not ip.is_global:
        return f"{address} is not a globally routable address"
    return None


class _GuardedResolver(AbstractResolver):
    """Resolves with the system resolver and refuses non-public addresses."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise Unreachable(f"cannot resolve {host!r}: {exc.strerror}") from exc
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = sockaddr[0]
            reason = None if self._allow_private else forbidden_reason(address)
            if reason:
                raise ForbiddenTarget(f"{host} resolves to a non-public address: {reason}")
            results.append(ResolveResult(hostname=host, host=address, port=port, family=fam, proto=proto, flags=0))
        return results

    async def close(self) -> None:
        return None


class Fetcher:
    """Downloads URLs to files; one shared connection pool. Use as an async context manager."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Fetcher":
        connector = aiohttp.TCPConnector(
            resolver=_GuardedResolver(self.settings.allow_private_urls), use_dns_cache=False, limit=64,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.settings.total_timeout_s,
            sock_connect=self.settings.connect_timeout_s,
            sock_read=self.settings.read_timeout_s,
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_url(self, url: URL) -> None:
        if url.scheme not in ("http", "https"):
            raise UnsupportedScheme(f"only http and https URLs are fetched, got {url.scheme or 'no'} scheme")
        if not url.host:
            raise UnsupportedScheme(f"URL has no host: {url}")
        if self.settings.allow_private_urls:
            return
        try:
            reason = forbidden_reason(url.host)
        except ValueError:
            return  # a host name: the guarded resolver checks what it resolves to
        if reason:
            raise ForbiddenTarget(f"refusing to fetch {url.host}: {reason}")

    async def fetch(self, url: str, dest: str | os.PathLike[str]) -> FetchResult:
        """Download ``url`` into ``dest``; raise a ``FetchError`` subclass on any failure."""
        if self._session is None:
            raise RuntimeError("Fetcher used outside 'async with'")
        dest = Path(dest)
        partial = dest.with_name(dest.name + ".part")
        began = time.perf_counter()
        current = URL(url)
        try:
            for _ in range(self.settings.max_redirects + 1):
                self._check_url(current)
                async with self._session.get(current, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                        current = response.url.join(URL(response.headers["Location"]))
                        continue
                    if response.status >= 400:
                        raise BadStatus(f"HTTP {response.status} from {current.host}")
                    size = await self._stream(response, partial)
                break
            else:
                raise TooManyRedirects(f"more than {self.settings.max_redirects} redirects from {url}")
        except FetchError:
            partial.unlink(missing_ok=True)
            raise
        except asyncio.TimeoutError as exc:
            partial.unlink(missing_ok=True)
            raise FetchTimeout(f"download of {URL(url).host} timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            partial.unlink(missing_ok=True)
            raise Unreachable(f"cannot connect to {current.host}:{current.port}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            partial.unlink(missing_ok=True)
            raise Unreachable(f"download from {current.host} failed: {exc.__class__.__name__}: {exc}") from exc
        partial.replace(dest)
        seconds = time.perf_counter() - began
        log.debug("fetched", extra={"fields": {"url_host": current.host, "bytes": size, "seconds": seconds}})
        return FetchResult(url=url, final_url=str(current), path=dest, bytes=size, seconds=seconds)

    async def _stream(self, response: aiohttp.ClientResponse, partial: Path) -> int:
        """Write the body to ``partial``, aborting as soon as the size cap is known to be exceeded."""
        cap = self.settings.max_bytes
        declared = response.content_length
        if declared is not None and declared > cap:
            raise TooLarge(f"Content-Length {declared} exceeds the {cap}-byte cap")
        written = 0
        with open(partial, "wb") as handle:
            async for chunk in response.content.iter_chunked(self.settings.chunk_bytes):
                written += len(chunk)
                if written > cap:
                    raise TooLarge(f"body exceeds the {cap}-byte cap")
                handle.write(chunk)
        return written
