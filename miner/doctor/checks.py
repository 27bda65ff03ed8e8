"""Every doctor check in the order it runs, and ``run_doctor``."""

from __future__ import annotations

import sys
from typing import TextIO

from miner.config import MinerConfig
from miner.doctor.chain import check_chain
from miner.doctor.model import check_encoder, check_warmup, check_weights
from miner.doctor.network import check_health, check_port
from miner.doctor.nofile import check_nofile
from miner.doctor.result import DoctorContext
from miner.doctor.runner import Step, run_steps
from miner.doctor.storage import check_storage
from miner.doctor.system import check_attention, check_gpu, check_versions
from miner.doctor.wallet import check_wallet
from miner.jobs.scheduler import visible_devices


def doctor_steps() -> list[Step]:
    """The checks in the order they run (later ones use what earlier ones found: the loaded upscaler,
    the hotkey, whether the miner is running)."""
    return [
        Step("gpu", check_gpu, 30.0),
        Step("versions", check_versions, 10.0),
        Step("attention", check_attention, 300.0),  # the first Triton call compiles and autotunes
        Step("weights", check_weights, 600.0),
        Step("warm-up", check_warmup, 600.0),  # on a GPU: torch.compile and kernel autotuning, then the timed run
        Step("encoder", check_encoder, 60.0),
        Step("wallet", check_wallet, 10.0),
        Step("port", check_port, 10.0),
        Step("nofile", check_nofile, 5.0),
        Step("health", check_health, 15.0),
        Step("storage", check_storage, 60.0),
        Step("chain", check_chain, 60.0),
    ]


def run_doctor(config: MinerConfig, *, allow_cpu: bool = False, out: TextIO = sys.stdout) -> int:
    """Run every check on the first worker device and print the results; the exit status (1: a FAIL)."""
    context = DoctorContext(config, allow_cpu=allow_cpu, device=visible_devices(config)[0])
    return run_steps(doctor_steps(), context, out)
