"""The server's limits (``[server.limits]`` and ``[server.ops]``) and the uvicorn options built from them.

    uvicorn.run(app, **uvicorn_options(config, metrics))
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any

from miner.config import MinerConfig
from miner.config_numbers import NUMBERS
from miner.metrics import MinerMetrics
from miner.server.connections import guarded_protocol
from miner.server.source_key import source_key

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ServerLimits:
    """See configs/miner.toml ``[server.limits]`` and docs/miner.md for each field."""

    max_in_flight: int = 256
    open_in_flight: int = 32
    synapse_max_bytes: int = 65536
    json_max_bytes: int = 65536
    json_max_depth: int = 16
    body_timeout_s: float = 10.0
    max_body_reads_per_ip: int = 8
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_header_bytes: int = 16384
    max_header_count: int = 64
    max_connections: int = 1024
    max_connections_per_ip: int = 16
    refusal_burst: int = 30
    refusal_rate_per_s: float = 1.0
    block_s: float = 60.0
    max_sources: int = 65536
    ipv6_source_prefix: int = 64

    @classmethod
    def from_config(cls, config: MinerConfig) -> "ServerLimits":
        limits = cls(**dict(config.get("server.limits")))
        limits.validate()
        return limits

    def validate(self) -> None:
        """``ValueError`` for settings that would refuse everyone or bound nothing: each field as its
        ``miner.config_numbers.NUMBERS`` rule allows, then the relations between them."""
        for field in dataclasses.fields(self):
            key = f"server.limits.{field.name}"
            NUMBERS[key].check(key, getattr(self, field.name))
        if self.open_in_flight > self.max_in_flight:
            raise ValueError(f"server.limits.open_in_flight ({self.open_in_flight}) must be at most "
                             f"server.limits.max_in_flight ({self.max_in_flight})")
        if self.max_connections <= self.max_in_flight:
            raise ValueError("server.limits.max_connections must exceed server.limits.max_in_flight "
                             "(idle keep-alive connections count against it)")
        if self.header_timeout_s <= self.keep_alive_s:
            raise ValueError(f"server.limits.header_timeout_s ({self.header_timeout_s:g}) must exceed "
                             f"server.limits.keep_alive_s ({self.keep_alive_s:g}): both run on an idle keep-alive "
                             "connection, and the header deadline closing it first counts as a slow-header refusal "
                             "against its source (validators reuse connections)")

    def source_of(self, ip: str) -> str:
        """The source ``ip`` counts as for every per-source limit (``miner.server.source_key``)."""
        return source_key(ip, self.ipv6_source_prefix)


@dataclass(frozen=True)
class OpsAccess:
    """Who may read ``/health`` and ``/metrics``: sources in ``allow``, or any presenting the bearer ``token``."""

    allow: tuple[IPNetwork, ...]
    token: str = ""

    def __post_init__(self) -> None:
        if not all("!" <= char <= "~" for char in self.token):
            raise ValueError("server.ops.token must be printable ASCII without spaces (it is matched against an "
                             "'Authorization: Bearer <token>' header); generate one with "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")

    @classmethod
    def from_config(cls, config: MinerConfig) -> "OpsAccess":
        ops = config.get("server.ops")
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in ops["allow"])
        except ValueError as exc:
            raise ValueError(f"server.ops.allow: {exc}") from None
        return cls(allow=networks, token=str(ops["token"]))

    def source_allowed(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow)


def uvicorn_options(config: MinerConfig, app: Any) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` for the miner app (``create_app``): h11 with bounded headers,
    connections and idle time (the longest idle connection closed to make room at ``max_connections``),
    sharing the app's per-source block list (sources keyed by ``limits.source_of``); closures counted in its
    metrics, and a header deadline missed spends a token of the source's refusal budget (slowloris sources get
    blocked)."""
    server = config.section("server")
    limits: ServerLimits = app.state.limits
    metrics: MinerMetrics = app.state.metrics

    def on_close(source: str, reason: str) -> None:
        metrics.connections_closed.labels(reason).inc()
        if reason == "header_timeout":
            app.state.sources.refused(source, reason)

    return {
        "host": server["host"], "port": int(server["port"]), "log_config": None, "access_log": False,
        "timeout_graceful_shutdown": int(server["shutdown_grace_s"]) + 5,
        "http": guarded_protocol(header_timeout_s=limits.header_timeout_s, max_per_ip=limits.max_connections_per_ip,
                                 max_connections=limits.max_connections, source_of=limits.source_of,
                                 blocked=app.state.sources.blocked, on_close=on_close),
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "limit_concurrency": limits.max_connections,
        "timeout_keep_alive": limits.keep_alive_s,
        "server_header": False,
        "proxy_headers": False,  # a source is the socket's peer (docs/security.md), as the connection guard sees it
    }
