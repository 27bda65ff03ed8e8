"""Admission of a proven hotkey: registered, with a validator permit, with at least ``min_stake``."""

from __future__ import annotations

from miner.auth.errors import NoValidatorPermit, StakeTooLow, UnknownHotkey
from miner.chain.registry import ValidatorInfo, ValidatorRegistry


def check_access(registry: ValidatorRegistry, hotkey: str, min_stake: float) -> ValidatorInfo:
    """The hotkey's ``ValidatorInfo``, or a ``Forbidden`` error saying why it may not call."""
    info = registry.lookup(hotkey)
    if info is None:
        raise UnknownHotkey(f"hotkey {hotkey} is not a registered validator of this subnet")
    if not info.permit:
        raise NoValidatorPermit(f"hotkey {hotkey} (uid {info.uid}) has no validator permit")
    if info.stake < min_stake:
        raise StakeTooLow(f"hotkey {hotkey} stake {info.stake:g} is below the minimum {min_stake:g}")
    return info
