"""``flashvsr-miner doctor``: every check an operator needs before going live, one line each.

    flashvsr-miner doctor --config ~/miner.toml              # exit status 1 when any check fails
    flashvsr-miner doctor --weights random-small --allow-cpu  # CPU tests and demos

Each check returns a :class:`CheckResult` (OK, FAIL with the exact fix, or SKIP where it does not
apply) within its time bound. ``start_problem`` runs the subset ``flashvsr-miner`` refuses to start
without (wallet, port, storage credentials), so a bad start ends in one line instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import TextIO

from miner.config import MinerConfig
from miner.doctor.chain import check_chain
from miner.doctor.model import check_encoder, check_warmup, check_weights
from miner.doctor.network import check_health, check_port, port_result, probe_port
from miner.doctor.result import CheckResult, DoctorContext, Status
from miner.doctor.runner import Step, run_bounded, run_steps
from miner.doctor.storage import NAME as STORAGE, check_storage, storage_round_trip
from miner.doctor.system import check_attention, check_gpu, check_versions
from miner.doctor.wallet import check_wallet, load_hotkey
from miner.jobs.scheduler import visible_devices

__all__ = ["CheckResult", "DoctorContext", "Status", "Step", "doctor_steps", "run_doctor", "start_problem"]

STORAGE_START_TIMEOUT_S = 30.0


def doctor_steps() -> list[Step]:
    """The checks in the order they run (later ones use what earlier ones found)."""
    return [
        Step("gpu", check_gpu, 30.0),
        Step("versions", check_versions, 10.0),
        Step("attention", check_attention, 300.0),  # the first Triton call compiles and autotunes
        Step("weights", check_weights, 600.0),
        Step("warm-up", check_warmup, 600.0),  # on a GPU: torch.compile and kernel autotuning, then the timed run
        Step("encoder", check_encoder, 60.0),
        Step("wallet", check_wallet, 10.0),
        Step("port", check_port, 10.0),
        Step("health", check_health, 15.0),
        Step("storage", check_storage, 60.0),
        Step("chain", check_chain, 60.0),
    ]


def run_doctor(config: MinerConfig, *, allow_cpu: bool = False, out: TextIO = sys.stdout) -> int:
    """Run every check on the first worker device and print the results; the exit status (1: a FAIL)."""
    context = DoctorContext(config, allow_cpu=allow_cpu, device=visible_devices(config)[0])
    return run_steps(doctor_steps(), context, out)


def start_problem(config: MinerConfig) -> CheckResult | None:
    """The first reason ``flashvsr-miner`` cannot start (a missing hotkey, a busy port, storage refusing
    writes), before any worker loads; None when there is none."""
    _, wallet = load_hotkey(config)
    if wallet.failed:
        return wallet
    server = config.section("server")
    port = port_result(probe_port(server["host"], int(server["port"])), miner_ok=False)
    if port.failed:
        return port
    storage = run_bounded(Step(STORAGE, lambda _context: storage_round_trip(config), STORAGE_START_TIMEOUT_S),
                          DoctorContext(config))
    return storage if storage.failed else None
