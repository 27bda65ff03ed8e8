"""With a chain configured: the hotkey registered on the netuid, and its published axon matching ``public_url``."""

from __future__ import annotations

from miner.chain import SubtensorReader, ValidatorInfo, endpoint_address, endpoint_intent
from miner.config import MinerConfig
from miner.doctor.result import CheckResult, DoctorContext
from miner.doctor.wallet import btcli_wallet_args

NAME = "chain"


def published_endpoint(config: MinerConfig) -> str:
    """The ``ip:port`` the chain should hold for us (from ``server.public_url``); ``ValueError`` when
    ``public_url`` cannot be published (a host name, loopback, unspecified)."""
    host, port = endpoint_address(None, int(config.get("server.port")), config.public_url)
    intent = endpoint_intent(int(config.get("chain.netuid")), host, port)
    return f"[{intent.ip}]:{intent.port}" if ":" in intent.ip else f"{intent.ip}:{intent.port}"


def registration_result(config: MinerConfig, hotkey: str, info: ValidatorInfo | None) -> CheckResult:
    """Compare the chain's record of ``hotkey`` (``None``: not registered) with the configuration."""
    chain = config.section("chain")
    where = f"netuid {chain['netuid']} on {chain['network']}"
    if info is None:
        return CheckResult.fail(NAME, f"hotkey {hotkey} is not registered on {where}",
                                f"register it: `btcli subnets register --netuid {chain['netuid']} "
                                f"{btcli_wallet_args(config)} --network {chain['network']}`")
    publish_fix = ("set server.public_url = \"http://<public IP>:<port>\" and start the miner once with --publish "
                   "(chain.publish = true) to publish it")
    try:
        expected = published_endpoint(config)
    except ValueError as exc:
        return CheckResult.fail(NAME, f"uid {info.uid} on {where}; server.public_url {config.public_url!r} cannot be "
                                      f"published: {exc}", publish_fix)
    if info.axon is None:
        return CheckResult.fail(NAME, f"uid {info.uid} on {where} publishes no axon (validators cannot reach us)",
                                publish_fix)
    if info.axon != expected:
        return CheckResult.fail(NAME, f"uid {info.uid} on {where} publishes {info.axon}, but server.public_url "
                                      f"gives {expected}", publish_fix)
    return CheckResult.ok(NAME, f"uid {info.uid} on {where}, axon {info.axon} matches server.public_url")


def check_chain(context: DoctorContext) -> CheckResult:
    """Read the subnet's neurons from the chain and compare our hotkey's record (skipped with no chain)."""
    chain = context.config.section("chain")
    if chain["no_chain"]:
        return CheckResult.skip(NAME, "chain.no_chain = true: only chain.allow_list hotkeys are served")
    hotkey = context.found.get("hotkey")
    if hotkey is None:
        return CheckResult.skip(NAME, "no hotkey to look up (see the wallet check)")
    try:
        neurons = SubtensorReader(chain["network"]).neurons(int(chain["netuid"]))
    except Exception as exc:  # any connection or runtime error of the chain client
        return CheckResult.fail(NAME, f"cannot read netuid {chain['netuid']} from {chain['network']}: "
                                      f"{type(exc).__name__}: {exc}",
                                f"check this machine reaches the chain (chain.network = {chain['network']!r}: "
                                "finney, test, or a ws:// endpoint), then run the doctor again")
    mine = next((n for n in neurons if n.hotkey == hotkey), None)
    return registration_result(context.config, hotkey, mine)
