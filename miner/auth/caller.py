"""``Caller``: who an authenticated request came from (returned by the FastAPI auth dependencies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

Transport = Literal["legacy", "btauth"]


@dataclass(frozen=True)
class Caller:
    """A verified validator: ss58 ``hotkey``, the ``transport`` it used, its ``stake`` (priority),
    ``permit`` (validator permit) and metagraph ``uid`` (``None`` for a static allow-list)."""

    hotkey: str
    transport: Transport
    stake: float
    permit: bool
    uid: Optional[int] = None
