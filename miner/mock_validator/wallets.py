"""The mock validators' bittensor wallets (hotkeys only, unencrypted: local use)."""

from __future__ import annotations

import logging
from pathlib import Path

import bittensor as bt

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "mock-validator"


def load_or_create(path: Path, name: str, hotkey: str = "default") -> bt.Wallet:
    """The wallet ``name``/``hotkey`` under ``path``; its hotkey is created (no password) when missing."""
    wallet = bt.Wallet(name=name, hotkey=hotkey, path=str(path))
    if not (path / name / "hotkeys" / hotkey).exists():
        wallet.create_new_hotkey(use_password=False, overwrite=False, suppress=True)
        log.info("created hotkey wallet=%s hotkey=%s ss58=%s path=%s", name, hotkey, wallet.hotkey.ss58_address, path)
    return wallet


def validator_wallets(path: Path, count: int, prefix: str = DEFAULT_PREFIX) -> list[bt.Wallet]:
    """``count`` validator wallets ``<prefix>0``, ``<prefix>1``, ... under ``path`` (created when missing)."""
    return [load_or_create(path, f"{prefix}{i}") for i in range(count)]
