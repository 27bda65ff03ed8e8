"""The open-file limit (``RLIMIT_NOFILE``) the server needs, and raising the soft limit to it at start.

Every connection is an open file. Many hosts give a process a soft limit of 1024, the default
``max_connections``: ``accept()`` then fails (EMFILE) before uvicorn's ``limit_concurrency`` is reached, so
closing idle connections to make room never runs and new callers, validators too, are not even accepted.

    state = open_file_limit(limits)      # soft, hard, needed
    raise_soft_limit(state)              # at start: soft -> needed where the hard limit allows (logged)
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from miner.server.limits import ServerLimits

log = logging.getLogger(__name__)

# The process's own files beside connections and requests: the listening socket, logs, the workers' pipes,
# downloads and their files, the storage and Ray clients' connections, connections still closing. Measured:
# 18 open at rest with one worker (random-small on a CPU).
PROCESS_FILES = 256
UNLIMITED = resource.RLIM_INFINITY


@dataclass(frozen=True)
class OpenFileLimit:
    """This process's soft and hard limits (``UNLIMITED`` for none) against what ``limits`` needs: one file per
    connection (``max_connections``), one more per request in flight (a ``/files`` answer's file, a download),
    and ``PROCESS_FILES``."""

    soft: int
    hard: int
    max_connections: int
    max_in_flight: int

    @property
    def needed(self) -> int:
        return self.max_connections + self.max_in_flight + PROCESS_FILES

    @property
    def fits(self) -> bool:
        """Whether the soft limit already covers ``needed``."""
        return self.soft == UNLIMITED or self.soft >= self.needed

    @property
    def raisable(self) -> bool:
        """Whether the hard limit lets the soft limit reach ``needed``."""
        return self.hard == UNLIMITED or self.hard >= self.needed

    def need(self) -> str:
        """``the N open files the server needs (how N is made)``."""
        return (f"the {self.needed} open files the server needs (server.limits.max_connections {self.max_connections}"
                f" + max_in_flight {self.max_in_flight} + {PROCESS_FILES} of its own)")

    def fix(self) -> str:
        """What to set so the hard limit allows ``needed`` (or the smaller ``max_connections`` that fits)."""
        n = self.needed
        text = (f"raise it to {n} or more: `ulimit -n {n}` in the shell that starts the miner (above the hard limit: "
                f"as root, or a `<user> hard nofile {n}` line in /etc/security/limits.conf and a new login), "
                f"`LimitNOFILE={n}` under [Service] of a systemd unit, for pm2 the daemon's own limit (`pm2 kill`, "
                f"then `ulimit -n {n}` and `pm2 start configs/ecosystem.config.js` in that shell, or LimitNOFILE={n} "
                "in the pm2-<user> unit that `pm2 startup` made)")
        fitting = self.hard - self.max_in_flight - PROCESS_FILES
        return text + (f"; or lower server.limits.max_connections to {fitting}" if fitting > self.max_in_flight
                       else "")


def open_file_limit(limits: ServerLimits) -> OpenFileLimit:
    """This process's limits against what ``limits`` needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFileLimit(soft, hard, limits.max_connections, limits.max_in_flight)


def raise_soft_limit(state: OpenFileLimit) -> None:
    """Raise the soft limit to ``state.needed`` when below it (logged). A hard limit below that is refused before
    (``miner.doctor.start``); here ``setrlimit`` would raise ``ValueError``."""
    if state.fits:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (state.needed, state.hard))
    log.info("raised the open-file limit", extra={"fields": {
        "soft_before": state.soft, "soft": state.needed, "hard": shown(state.hard), "needed": state.needed}})


def shown(limit: int) -> str:
    """A limit as the operator reads it: a number, or ``unlimited``."""
    return "unlimited" if limit == UNLIMITED else str(limit)
