"""Publishing the miner's endpoint on chain with bittensor 11's ``ServeAxon`` intent.

    publish_endpoint(wallet, netuid=85, ip="203.0.113.7", port=8091, network="finney")
    publish_endpoint(wallet, netuid=85, public_url="http://203.0.113.7:8091", port=8091)  # same

Signed by the wallet's hotkey, which must be registered on the subnet; the chain rate-limits
re-publishing. Validators on bittensor 10 reach us at ``http://ip:port/<SynapseName>``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Optional
from urllib.parse import urlsplit

import bittensor as bt

log = logging.getLogger(__name__)

AXON_PROTOCOL = 4  # what bittensor 10 axons publish


def endpoint_intent(netuid: int, ip: str, port: int) -> bt.ServeAxon:
    """The ``ServeAxon`` intent for ``ip:port``; ``ValueError`` for a non-IP host or a bad port."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"the chain stores an IP address, not a host name: {ip!r}") from None
    if address.is_unspecified or address.is_loopback:
        raise ValueError(f"{ip} is not reachable by validators; publish the public address")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return bt.ServeAxon(netuid=netuid, ip=str(address), port=port, protocol=AXON_PROTOCOL)


def endpoint_address(ip: Optional[str], port: Optional[int], public_url: Optional[str]) -> tuple[str, int]:
    """The ``(host, port)`` to publish: ``public_url``'s (``port`` when it names none), else ``ip`` and ``port``."""
    if public_url:
        parts = urlsplit(public_url)
        if not parts.hostname:
            raise ValueError(f"public_url has no host: {public_url!r}")
        return parts.hostname, parts.port or port or (443 if parts.scheme == "https" else 80)
    if not ip or not port:
        raise ValueError("give ip and port, or public_url")
    return ip, port


def publish_endpoint(wallet: Any, netuid: int, ip: Optional[str] = None, port: Optional[int] = None,
                     network: str = "finney", *, public_url: Optional[str] = None,
                     client: Optional[Any] = None) -> Any:
    """Submit ``ServeAxon`` for our endpoint and return the ``ExtrinsicResult`` (raises if it failed).

    The endpoint is ``ip:port``, or the host and port of ``public_url`` (``port`` when the URL has
    none). ``client`` is anything with ``execute(intent, wallet)``; default ``bt.SyncClient(network)``.
    """
    host, real_port = endpoint_address(ip, port, public_url)
    intent = endpoint_intent(netuid, host, real_port)
    client = client or bt.SyncClient(network)
    log.info("publishing endpoint", extra={"fields": {"netuid": netuid, "ip": intent.ip, "port": intent.port,
                                                      "network": network, "hotkey": wallet.hotkey.ss58_address}})
    result = client.execute(intent, wallet)
    if not result.success:
        log.error("endpoint not published", extra={"fields": {"netuid": netuid, "message": result.message}})
        result.raise_for_failure()
    log.info("endpoint published", extra={"fields": {"netuid": netuid, "extrinsic": result.extrinsic_id}})
    return result
