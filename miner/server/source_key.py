"""Which source a client address counts as, for every per-source limit (connections, body reads, refusal budget,
blocks) and every log line that names a source.

    source_key("203.0.113.7", 64)              -> "203.0.113.7"
    source_key("::ffff:203.0.113.7", 64)       -> "203.0.113.7"          (IPv4-mapped: the IPv4 address)
    source_key("2001:db8:1:2:a:b:c:d", 64)     -> "2001:db8:1:2::/64"

One host's normal IPv6 allocation is a /64: keyed by the full address, it would be 2^64 sources, each with its
own connection cap and refusal budget, and blocking one address would stop nothing.
"""

from __future__ import annotations

import functools
import ipaddress

IPV6_BITS = 128


@functools.lru_cache(maxsize=4096)  # a flood comes from few sources: each is parsed once
def source_key(ip: str, ipv6_prefix: int) -> str:
    """An IPv4 address as it is (also when written IPv4-mapped); an IPv6 address as its ``/ipv6_prefix``
    network; anything that is not an address (a Unix socket's ``""``) unchanged."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    host_bits = IPV6_BITS - ipv6_prefix
    return ipaddress.IPv6Network((int(address) >> host_bits << host_bits, ipv6_prefix)).compressed
