"""A real miner process for the security tests: ``python -m miner`` on 127.0.0.1 (random-small weights,
local storage, ``--no-chain`` allow-list of real validator wallets), plus what the tests read of it
(resident memory from /proc, bytes read, ``/metrics`` counters) and a static media server for clips."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from miner.mock_validator import wallets
from scripts.run_local import MINER_WALLET, free_port, miner_config, stop, wait_healthy

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningMiner:
    url: str
    hotkey: str
    proc: subprocess.Popen
    log: Path
    validators: list[Any]
    outsider: Any

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory figure (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def bytes_read(pid: int) -> int:
    """Bytes the process has read through system calls (sockets and files): /proc/<pid>/io ``rchar``."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"])


def metric_values(url: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one counter family from ``/metrics`` (labels as written, "" for none)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for match in re.finditer(rf"^{name}_total(\{{[^}}]*\}})? (\S+)$", text, re.M):
        values[match.group(1) or ""] = float(match.group(2))
    return values


@contextlib.contextmanager
def running_miner(root: Path, *, validators: int = 2, extra_toml: str = "", storage_dir: Path | None = None) -> Iterator[RunningMiner]:
    """Start the miner with ``extra_toml`` appended to its config; stop it (gracefully) afterwards."""
    keys = [wallets.load_or_create(root / "wallets", f"validator-{i}") for i in range(validators)]
    outsider = wallets.load_or_create(root / "wallets", "outsider")
    hotkey = wallets.load_or_create(root / "wallets", MINER_WALLET).hotkey.ss58_address
    port = free_port()
    config = miner_config(root, port, "random-small", [k.hotkey.ss58_address for k in keys])
    text = config.read_text()
    if storage_dir is not None:
        text = text.replace(json_path(root / "files"), json_path(storage_dir))
    config.write_text(text + extra_toml)
    log = root / "miner.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "miner", "--config", str(config)], cwd=REPO, stdout=sink,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{url}/health", proc, 300)
            yield RunningMiner(url, hotkey, proc, log, keys, outsider)
        finally:
            stop(proc)


def json_path(path: Path) -> str:
    return json.dumps(str(path))


@contextlib.contextmanager
def media_server(directory: Path) -> Iterator[str]:
    """A static HTTP server of ``directory`` on loopback; its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
