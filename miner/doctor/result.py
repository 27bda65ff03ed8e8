"""What one doctor check found: a :class:`CheckResult` (status, detail, the fix), and the shared context."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from miner.config import MinerConfig


class Status(str, enum.Enum):
    OK = "OK"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome; ``fix`` is the exact thing to do (a command, a key to set) when it failed."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @classmethod
    def ok(cls, name: str, detail: str) -> "CheckResult":
        return cls(name, Status.OK, detail)

    @classmethod
    def fail(cls, name: str, detail: str, fix: str) -> "CheckResult":
        return cls(name, Status.FAIL, detail, fix)

    @classmethod
    def skip(cls, name: str, detail: str) -> "CheckResult":
        return cls(name, Status.SKIP, detail)

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def line(self) -> str:
        """``OK   name  detail``, a failure with `` -- fix: ...`` appended: one line per check."""
        text = f"{self.status.value:<4} {self.name:<9} {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix else text

    def start_error(self) -> str:
        """The one-line refusal of ``flashvsr-miner`` to start."""
        return f"flashvsr-miner: {self.detail}; {self.fix}"


@dataclass
class DoctorContext:
    """The configuration and what earlier checks left for later ones (the loaded upscaler, the hotkey)."""

    config: MinerConfig
    allow_cpu: bool = False
    device: str = "cpu"
    found: dict[str, Any] = field(default_factory=dict)


Check = Callable[[DoctorContext], CheckResult]
