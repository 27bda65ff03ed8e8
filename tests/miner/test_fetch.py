"""miner.fetch against a real HTTP server on loopback: caps, timeouts, schemes, targets, redirects."""

from __future__ import annotations

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from miner.fetch import (
    Fetcher, FetchSettings, ForbiddenTarget, TooLarge, TooManyRedirects, Unreachable, UnsupportedScheme,
    forbidden_reason,
)

BODY = bytes(range(256)) * 40  # 10 240 bytes


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        parts = self.path.strip("/").split("/")
        if parts[0] == "clip":
            self._send(BODY)
        elif parts[0] == "declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**10))
            self.end_headers()
            self.wfile.write(BODY[:100])
        elif parts[0] == "chunked-huge":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(BODY), BODY))
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "redirect":
            hops = int(parts[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{hops - 1}" if hops > 1 else "/clip")
            self.end_headers()
        elif parts[0] == "to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        elif parts[0] == "echo-host":
            self._send(f"{self.headers['Host']} {self.connection.getsockname()[0]}".encode())
        elif parts[0] == "missing":
            self._send(b"no", status=404)

    def _send(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients aborting an oversized body are expected here


@pytest.fixture(scope="module")
def server() -> str:
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetch(url: str, dest: Path, **settings: object):
    async def go():
        async with Fetcher(FetchSettings(**{"allow_private_urls": True, **settings})) as fetcher:
            return await fetcher.fetch(url, dest)

    return asyncio.run(go())


def test_download_streams_to_disk(server: str, tmp_path: Path) -> None:
    result = _fetch(f"{server}/clip", tmp_path / "a.mp4")
    assert result.path.read_bytes() == BODY
    assert result.bytes == len(BODY)
    assert not (tmp_path / "a.mp4.part").exists()


def test_size_cap_from_content_length(server: str, tmp_path: Path) -> None:
    with pytest.raises(TooLarge, match="Content-Length"):
        _fetch(f"{server}/declared-huge", tmp_path / "a.mp4", max_bytes=5000)
    assert list(tmp_path.iterdir()) == []


def test_size_cap_while_streaming(server: str, tmp_path: Path) -> None:
    with pytest.raises(TooLarge, match="body exceeds"):
        _fetch(f"{server}/chunked-huge", tmp_path / "a.mp4", max_bytes=len(BODY) * 3)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_port(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(Unreachable):
        _fetch(f"http://127.0.0.1:{port}/clip", tmp_path / "a.mp4", connect_timeout_s=2.0)


def test_unresolvable_host(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match="resolve"):
        _fetch("http://no-such-host.invalid/clip", tmp_path / "a.mp4")


@pytest.mark.parametrize("url", ["ftp://example.com/a.mp4", "file:///etc/passwd", "data:,hello"])
def test_only_http_schemes(url: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedScheme):
        _fetch(url, tmp_path / "a.mp4")


def test_private_targets_refused(server: str, tmp_path: Path) -> None:
    port = server.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}/clip", f"http://localhost:{port}/clip", "http://10.1.2.3/clip",
                "http://169.254.169.254/latest/meta-data", "http://[::1]/clip"):
        with pytest.raises(ForbiddenTarget):
            _fetch(url, tmp_path / "a.mp4", allow_private_urls=False)


def test_host_name_kept_while_connecting_to_the_checked_address(server: str, tmp_path: Path) -> None:
    """The guarded resolver's address is the one connected to; ``Host`` stays the URL's name."""
    port = server.rsplit(":", 1)[1]
    result = _fetch(f"http://localhost:{port}/echo-host", tmp_path / "host.txt")
    host, address = result.path.read_text().split()
    assert host == f"localhost:{port}" and address in ("127.0.0.1", "::1")


def test_forbidden_reason_classifies_addresses() -> None:
    assert forbidden_reason("8.8.8.8") is None
    assert "loopback" in forbidden_reason("127.0.0.1")
    assert "private" in forbidden_reason("192.168.1.10")
    assert "link-local" in forbidden_reason("fe80::1")
    assert forbidden_reason("::ffff:10.0.0.1") is not None


def test_redirects_followed_within_limit(server: str, tmp_path: Path) -> None:
    result = _fetch(f"{server}/redirect/2", tmp_path / "a.mp4", max_redirects=2)
    assert result.path.read_bytes() == BODY
    assert result.final_url.endswith("/clip")


def test_redirect_limit(server: str, tmp_path: Path) -> None:
    with pytest.raises(TooManyRedirects):
        _fetch(f"{server}/redirect/3", tmp_path / "a.mp4", max_redirects=2)


def test_each_redirect_hop_is_checked(server: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedScheme):
        _fetch(f"{server}/to-file", tmp_path / "a.mp4")


def test_http_error_status(server: str, tmp_path: Path) -> None:
    from miner.fetch import BadStatus

    with pytest.raises(BadStatus, match="404"):
        _fetch(f"{server}/missing", tmp_path / "a.mp4")
