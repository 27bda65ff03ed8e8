"""Running checks with a time bound each, printing one line per check, and the exit status."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, TextIO

from miner.doctor.result import Check, CheckResult, DoctorContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """A check under its name, and how long it may take before it counts as failed."""

    name: str
    check: Check
    timeout_s: float


def run_bounded(step: Step, context: DoctorContext) -> CheckResult:
    """``step.check(context)`` in a daemon thread; a check still running after ``timeout_s`` fails (it is
    left to finish in the background), and an unexpected exception fails with its message."""
    outcome: list[CheckResult] = []

    def target() -> None:
        try:
            outcome.append(step.check(context))
        except Exception as exc:  # a check's own failures are results; anything else still is one
            log.debug("check raised", exc_info=True)
            outcome.append(CheckResult.fail(step.name, f"unexpected error: {type(exc).__name__}: {exc}",
                                            "run with --log-level DEBUG and report the error"))

    thread = threading.Thread(target=target, name=f"doctor-{step.name}", daemon=True)
    thread.start()
    thread.join(step.timeout_s)
    if not outcome:
        return CheckResult.fail(step.name, f"did not finish within {step.timeout_s:g} s",
                                "run with --log-level DEBUG to see where it stops")
    return outcome[0]


def run_steps(steps: Iterable[Step], context: DoctorContext, out: TextIO,
              clock: Callable[[], float] = time.monotonic) -> int:
    """Run every step in order, print each result as it comes; 1 if any failed, else 0."""
    failed = 0
    for step in steps:
        began = clock()
        result = run_bounded(step, context)
        print(result.line(), file=out, flush=True)
        log.debug("check done", extra={"fields": {"check": step.name, "status": result.status.value,
                                                  "seconds": round(clock() - began, 2)}})
        failed += result.failed
    print(f"{failed} check(s) failed" if failed else "every check passed", file=out, flush=True)
    return 1 if failed else 0
