"""The wallet's hotkey file (the miner signs and identifies itself with it) and the coldkey beside it."""

from __future__ import annotations

from pathlib import Path

import bittensor as bt

from miner.config import MinerConfig
from miner.doctor.result import CheckResult, DoctorContext

NAME = "wallet"


def btcli_wallet_args(config: MinerConfig, *, hotkey: bool = True) -> str:
    """``--wallet NAME [--wallet-hotkey HOTKEY] --wallet-path PATH`` of the configured wallet."""
    chain = config.section("chain")
    hot = f" --wallet-hotkey {chain['wallet_hotkey']}" if hotkey else ""
    return f"--wallet {chain['wallet_name']}{hot} --wallet-path {chain['wallet_path']}"


def load_hotkey(config: MinerConfig) -> tuple[str | None, CheckResult]:
    """The hotkey's ss58 address and an OK result, or ``None`` and a FAIL naming what is missing and the
    ``btcli`` command that creates it."""
    chain = config.section("chain")
    wallet = bt.Wallet(name=chain["wallet_name"], hotkey=chain["wallet_hotkey"], path=chain["wallet_path"])
    hotkey_file = Path(chain["wallet_path"]).expanduser() / chain["wallet_name"] / "hotkeys" / chain["wallet_hotkey"]
    wallet_dir = hotkey_file.parent.parent
    if not hotkey_file.is_file():
        create_hotkey = f"btcli wallet new_hotkey {btcli_wallet_args(config)}"
        if not (wallet_dir / "coldkeypub.txt").is_file():
            return None, CheckResult.fail(
                NAME, f"no wallet {chain['wallet_name']!r} in {chain['wallet_path']} (hotkey file {hotkey_file} missing)",
                f"create it with `btcli wallet new_coldkey {btcli_wallet_args(config, hotkey=False)}` then "
                f"`{create_hotkey}` (or set chain.wallet_name / chain.wallet_path to your wallet)")
        return None, CheckResult.fail(
            NAME, f"hotkey {chain['wallet_hotkey']!r} of wallet {chain['wallet_name']!r} missing: {hotkey_file}",
            f"create it with `{create_hotkey}` (or set chain.wallet_hotkey to an existing hotkey)")
    try:
        address = wallet.hotkey.ss58_address
    except Exception as exc:  # bittensor raises its own keyfile errors (encrypted, corrupt, unreadable)
        return None, CheckResult.fail(
            NAME, f"hotkey file {hotkey_file} cannot be read: {type(exc).__name__}: {exc}",
            f"the miner needs an unencrypted, readable hotkey: `btcli wallet regen_hotkey {btcli_wallet_args(config)}` "
            "from its mnemonic, or fix the file's permissions")
    return address, CheckResult.ok(NAME, f"hotkey {address} ({hotkey_file})")


def check_wallet(context: DoctorContext) -> CheckResult:
    """The hotkey file loads; its address is kept for the chain check."""
    address, result = load_hotkey(context.config)
    if address is not None:
        context.found["hotkey"] = address
    return result
