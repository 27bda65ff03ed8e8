"""The checks ``flashvsr-miner`` runs before loading any worker: the same functions as the doctor's."""

from __future__ import annotations

from miner.config import MinerConfig
from miner.doctor.network import port_result, probe_port
from miner.doctor.nofile import check_nofile
from miner.doctor.result import CheckResult, DoctorContext
from miner.doctor.runner import Step, run_bounded
from miner.doctor.storage import NAME as STORAGE
from miner.doctor.storage import storage_round_trip
from miner.doctor.wallet import load_hotkey

STORAGE_TIMEOUT_S = 30.0


def start_problem(config: MinerConfig) -> CheckResult | None:
    """The first reason the miner cannot start (a missing hotkey, a busy port, an open-file hard limit below what
    the server needs, storage refusing a write: wrong S3 credentials, no bucket, an unwritable directory); None
    when there is none."""
    _, wallet = load_hotkey(config)
    if wallet.failed:
        return wallet
    server = config.section("server")
    port = port_result(probe_port(server["host"], int(server["port"])), miner_ok=False)
    if port.failed:
        return port
    nofile = check_nofile(DoctorContext(config))
    if nofile.failed:
        return nofile
    storage = run_bounded(Step(STORAGE, lambda _context: storage_round_trip(config), STORAGE_TIMEOUT_S),
                          DoctorContext(config))
    return storage if storage.failed else None
