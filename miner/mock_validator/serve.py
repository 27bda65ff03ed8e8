"""Serving the low-resolution inputs to the miner over HTTP on loopback, as the validator's storage would."""

from __future__ import annotations

import collections
import functools
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args, counter: collections.Counter, lock: threading.Lock, **kwargs) -> None:
        self._counter, self._lock = counter, lock
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        with self._lock:
            self._counter[self.path.split("?", 1)[0].lstrip("/")] += 1
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server signature)
        log.debug("input server %s %s", self.address_string(), format % args)


class InputServer:
    """A threaded HTTP server for ``directory`` on ``127.0.0.1`` (ephemeral port) that counts GETs per file."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.downloads: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        handler = functools.partial(_Handler, directory=str(directory), counter=self.downloads, lock=self._lock)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mock-validator-inputs", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        """The URL of the served file ``name``."""
        return f"{self.base_url}/{name}"

    def __enter__(self) -> "InputServer":
        self._thread.start()
        log.info("serving inputs url=%s", self.base_url)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
