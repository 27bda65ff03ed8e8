"""Who counts as a validator: the ``ValidatorRegistry`` protocol and the static allow-list (``--no-chain``).

    registry = StaticAllowList(["5F..."], stake=1.0)
    info = registry.lookup(hotkey)          # ValidatorInfo | None
    registry.priority(hotkey)               # stake, 0.0 for an unknown hotkey
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Protocol, runtime_checkable


@dataclass(frozen=True)
class ValidatorInfo:
    """One hotkey's standing on the subnet: ``uid`` (``None`` off-chain), validator ``permit``, ``stake``, and
    the ``ip:port`` its axon publishes (``None`` when nothing is served, or off-chain)."""

    hotkey: str
    uid: Optional[int]
    permit: bool
    stake: float
    axon: Optional[str] = None


@runtime_checkable
class ValidatorRegistry(Protocol):
    """Looks hotkeys up; implementations must be safe to call from any thread."""

    def lookup(self, hotkey: str) -> Optional[ValidatorInfo]:
        """The hotkey's standing, ``None`` when it is not registered."""
        ...

    def priority(self, hotkey: str) -> float:
        """Queue priority of the hotkey's requests (its stake; 0.0 when unknown)."""
        ...


class StaticAllowList:
    """Every listed hotkey is a validator with a validator permit and the same configured ``stake``."""

    def __init__(self, hotkeys: Iterable[str], stake: float = 1.0) -> None:
        self._infos = {h: ValidatorInfo(hotkey=h, uid=None, permit=True, stake=float(stake)) for h in hotkeys}

    def __len__(self) -> int:
        return len(self._infos)

    def lookup(self, hotkey: str) -> Optional[ValidatorInfo]:
        return self._infos.get(hotkey)

    def priority(self, hotkey: str) -> float:
        info = self._infos.get(hotkey)
        return info.stake if info else 0.0
