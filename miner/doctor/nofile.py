"""The open-file limit: the hard limit must let the miner raise its soft limit to what the server needs."""

from __future__ import annotations

from miner.doctor.result import CheckResult, DoctorContext
from miner.server.limits import ServerLimits
from miner.server.nofile import OpenFileLimit, open_file_limit, shown

NAME = "nofile"


def nofile_result(state: OpenFileLimit) -> CheckResult:
    """OK when the soft limit covers the need, or the hard limit lets the miner raise it at start; FAIL (with the
    settings that raise it) when the hard limit is below it."""
    soft, hard = shown(state.soft), shown(state.hard)
    if state.fits:
        return CheckResult.ok(NAME, f"soft open-file limit {soft} covers {state.need()}")
    if state.raisable:
        return CheckResult.ok(NAME, f"soft open-file limit {soft} is below {state.need()}: the miner raises it at "
                                    f"start (hard limit {hard})")
    return CheckResult.fail(NAME, f"hard open-file limit {hard} (soft {soft}) is below {state.need()}", state.fix())


def check_nofile(context: DoctorContext) -> CheckResult:
    """This process's limits (those of the shell or service manager that starts the miner) against the need."""
    return nofile_result(open_file_limit(ServerLimits.from_config(context.config)))
