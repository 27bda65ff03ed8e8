"""Miner test fixtures: real bittensor 11 wallets (coldkey + hotkey files, no password) in temp dirs.

``validator_wallet`` and ``miner_wallet`` are session-wide; ``make_wallet(name)`` makes more (e.g. a
non-validator caller). Use ``wallet.hotkey`` (a ``Keypair``) to sign, ``.ss58_address`` for the address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import bittensor as bt
import pytest


def create_wallet(root: Path, name: str) -> bt.Wallet:
    """A new unencrypted wallet ``name`` with hotkey ``default`` under ``root`` (read back from disk)."""
    wallet = bt.Wallet(name=name, hotkey="default", path=str(root))
    wallet.create_new_coldkey(use_password=False, suppress=True)
    wallet.create_new_hotkey(use_password=False, suppress=True)
    return bt.Wallet(name=name, hotkey="default", path=str(root))


@pytest.fixture(scope="session")
def wallet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wallets")


@pytest.fixture(scope="session")
def make_wallet(wallet_root: Path) -> Callable[[str], bt.Wallet]:
    """``make_wallet(name)``: a new real wallet in the session's wallet dir (one per name)."""
    made: dict[str, bt.Wallet] = {}

    def make(name: str) -> bt.Wallet:
        if name not in made:
            made[name] = create_wallet(wallet_root, name)
        return made[name]

    return make


@pytest.fixture(scope="session")
def validator_wallet(make_wallet: Callable[[str], bt.Wallet]) -> bt.Wallet:
    return make_wallet("validator")


@pytest.fixture(scope="session")
def miner_wallet(make_wallet: Callable[[str], bt.Wallet]) -> bt.Wallet:
    return make_wallet("miner")
