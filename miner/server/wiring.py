"""Builds the validator registry and the two transports' authenticators from the configuration."""

from __future__ import annotations

import logging

import bittensor as bt

from miner.auth import BtAuth, LegacyAuth
from miner.chain import MetagraphView, StaticAllowList, publish_endpoint
from miner.config import MinerConfig
from miner.server.app import Authenticators

log = logging.getLogger(__name__)


def authenticators(config: MinerConfig) -> Authenticators:
    """Wallet hotkey, registry (static allow-list or metagraph view), and the authenticators."""
    chain = config.section("chain")
    wallet = bt.Wallet(name=chain["wallet_name"], hotkey=chain["wallet_hotkey"], path=chain["wallet_path"])
    own_hotkey = wallet.hotkey.ss58_address
    if chain["no_chain"]:
        registry = StaticAllowList(chain["allow_list"], stake=float(chain["allow_list_stake"]))
    else:
        registry = MetagraphView(network=chain["network"], netuid=int(chain["netuid"]),
                                 snapshot_path=chain["snapshot_path"], refresh_s=float(chain["metagraph_refresh_s"]))
        if chain["publish"]:
            server = config.section("server")
            publish_endpoint(wallet, network=chain["network"], netuid=int(chain["netuid"]),
                             public_url=config.public_url, port=int(server["port"]))
    min_stake = float(chain["min_stake"])
    log.info("auth configured", extra={"fields": {"hotkey": own_hotkey, "no_chain": chain["no_chain"],
                                                  "min_stake": min_stake}})
    return Authenticators(
        legacy=LegacyAuth(own_hotkey, registry, min_stake=min_stake),
        btauth=BtAuth(own_hotkey, registry, min_stake=min_stake),
    )
