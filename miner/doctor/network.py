"""The listen port (free, or held by this miner) and ``server.public_url`` answering ``/health``."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from miner.doctor.result import CheckResult, DoctorContext

PORT = "port"
HEALTH = "health"
HTTP_TIMEOUT_S = 5.0
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class PortState:
    """Whether ``host:port`` can be bound now; when not: the bind error, who listens there, and whether
    that is a flashvsr-miner (its ``/health`` answers with ``workers``)."""

    host: str
    port: int
    error: OSError | None = None
    holder: str | None = None
    miner: bool = False

    @property
    def free(self) -> bool:
        return self.error is None


def probe_port(host: str, port: int) -> PortState:
    """Bind ``host:port`` as uvicorn does (``SO_REUSEADDR``) and release it at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return PortState(host, port, exc)
            return PortState(host, port, exc, port_holder(port), _answers_as_miner(host, port))
    return PortState(host, port)


def port_result(state: PortState, *, miner_ok: bool) -> CheckResult:
    """OK when free (or, with ``miner_ok``, held by a miner); else FAIL naming the holder and the fix."""
    where = f"{state.host}:{state.port}"
    if state.free:
        return CheckResult.ok(PORT, f"{where} is free (the miner is not running)")
    if state.error is not None and state.error.errno != errno.EADDRINUSE:
        return CheckResult.fail(PORT, f"cannot listen on {where}: {state.error.strerror}",
                                "set server.host to an address of this machine (or 0.0.0.0) and server.port to a "
                                "port from 1024 to 65535 (--host / --port)")
    holder = state.holder or "another process (not visible to this user: `ss -ltnp` as root names it)"
    if state.miner and miner_ok:
        return CheckResult.ok(PORT, f"{where} is held by the running flashvsr-miner ({holder})")
    what = "a running flashvsr-miner" if state.miner else "another program"
    return CheckResult.fail(PORT, f"port {state.port} is already in use by {what}: {holder}",
                            f"stop it, or give this miner another port with --port (server.port = {state.port})")


def port_holder(port: int) -> str | None:
    """``pid N: command line`` of the process listening on TCP ``port`` (Linux ``/proc``; None when the
    socket is not found or belongs to a process this user cannot inspect)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")) if inodes else ():
        try:
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                continue
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        return f"pid {pid}: {command[:160]}"
    return None


def _answers_as_miner(host: str, port: int) -> bool:
    local = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://[{local}]:{port}/health" if ":" in local else f"http://{local}:{port}/health"
    try:
        body = httpx.get(url, timeout=1.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and "workers" in body and "device" in body


def check_port(context: DoctorContext) -> CheckResult:
    """The port is free, or this miner holds it (remembered for the health and storage checks)."""
    server = context.config.section("server")
    state = probe_port(server["host"], int(server["port"]))
    context.found["miner_running"] = state.miner
    return port_result(state, miner_ok=True)


def check_health(context: DoctorContext) -> CheckResult:
    """``public_url/health`` answers 200 from the running miner; skipped while it is not running."""
    url = f"{context.config.public_url}/health"
    if not context.found.get("miner_running"):
        return CheckResult.skip(HEALTH, f"the miner is not running; start it and run the doctor again to check {url}")
    token = context.config.get("server.ops.token")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT_S, headers=headers)
    except httpx.HTTPError as exc:
        return CheckResult.fail(HEALTH, f"{url} does not answer: {type(exc).__name__}: {exc}",
                                f"open port {context.config.get('server.port')} to validators (firewall, port "
                                "forwarding) and set server.public_url to the address they reach this miner at")
    if response.status_code == 503:
        return CheckResult.fail(HEALTH, f"{url} answers 503: the miner is starting or stopping",
                                "wait for the `miner serving` log line, then run the doctor again")
    if response.status_code == 404 and not token:
        return CheckResult.fail(HEALTH, f"{url} answers 404: /health is served only to server.ops.allow sources "
                                        "or with server.ops.token, and this host reaches itself from outside them",
                                "set server.ops.token (the doctor sends it), or add this host's public address to "
                                "server.ops.allow")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or "workers" not in body:
        return CheckResult.fail(HEALTH, f"{url} answers {response.status_code}, not this miner's /health",
                                "server.public_url must point at this miner (no proxy path prefix)")
    return CheckResult.ok(HEALTH, f"{url} answers: {body.get('workers')} worker(s) on {body.get('device')}, "
                                  f"queue {body.get('queue_depth')}")
