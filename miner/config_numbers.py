"""The type and allowed range of every numeric key of the miner's configuration, checked when it is loaded.

    check_numbers(raw)   # ValueError: jobs.max_queue must be a whole number of at least 1, got 0

TOML reads ``nan`` and ``inf`` as numbers and an environment override can carry any text: each key is checked
for its type (a bool is no number; a whole number is accepted where any number is), for being finite and for its
range, before anything reads it. Relations between keys (``storage.retention_s`` >= ``storage.url_expiry_s``,
``server.limits.header_timeout_s`` > ``keep_alive_s``, ...) are checked where the keys are read together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from miner.server.source_key import IPV6_BITS

MIN_IPV6_SOURCE_PREFIX = 32  # shorter prefixes lump unrelated networks (a /32 is a whole ISP's allocation)


@dataclass(frozen=True)
class Number:
    """One key's rule: a whole number (``whole``) or any finite number, at least ``low`` and at most ``high``,
    greater than ``above``; ``note`` says what a special value means."""

    whole: bool
    low: int | None = None
    high: int | None = None
    above: int | None = None
    note: str = ""

    @property
    def allowed(self) -> str:
        """What the key takes, as the operator reads it: ``a finite number greater than 0``."""
        if self.low is not None and self.high is not None:
            bounds = f" from {self.low} to {self.high}"
        elif self.above is not None and self.high is not None:
            bounds = f" greater than {self.above} and at most {self.high}"
        elif self.above is not None:
            bounds = f" greater than {self.above}"
        else:
            bounds = f" of at least {self.low}" if self.low is not None else ""
        note = f" ({self.note})" if self.note else ""
        return f"{'a whole number' if self.whole else 'a finite number'}{bounds}{note}"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has the type and lies in the range (a whole number is always finite)."""
        if isinstance(value, bool) or not isinstance(value, int if self.whole else (int, float)):
            return False
        if not isinstance(value, int) and not math.isfinite(value):
            return False
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above))

    def check(self, key: str, value: Any) -> None:
        """``ValueError`` naming ``key``, ``value`` and what is allowed, unless the rule accepts ``value``."""
        if not self.accepts(value):
            raise ValueError(f"{key} must be {self.allowed}, got {value!r}{quoted_number_hint(value)}")


def quoted_number_hint(value: Any) -> str:
    """What to do when ``value`` is a number written in quotes (text in a TOML file), else ``""``."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (a number in quotes: write it without them)"


WHOLE_1 = Number(whole=True, low=1)          # sizes, counts, caps
WHOLE_0 = Number(whole=True, low=0)          # counts where 0 means none
POSITIVE = Number(whole=False, above=0)      # durations, rates and amounts that cannot be none
NON_NEGATIVE = Number(whole=False, low=0)    # durations and amounts where 0 means none (or no wait)
CRF = Number(whole=True, low=0, high=51)     # x264/x265 constant rate factor

# Every numeric key of configs/miner.toml (tests/miner/test_config_numbers.py walks the file), and those of the
# free tables: ``*`` is any key the operator names ([tasks] types, [cluster.resources] resources).
NUMBERS: dict[str, Number] = {
    "server.port": Number(whole=True, low=1, high=65535),
    "server.shutdown_grace_s": NON_NEGATIVE,
    "server.default_timeout_s": POSITIVE,
    "server.limits.max_in_flight": WHOLE_1,
    "server.limits.open_in_flight": WHOLE_1,
    "server.limits.synapse_max_bytes": WHOLE_1,
    "server.limits.json_max_bytes": WHOLE_1,
    "server.limits.json_max_depth": WHOLE_1,
    "server.limits.body_timeout_s": POSITIVE,
    "server.limits.max_body_reads_per_ip": WHOLE_1,
    "server.limits.header_timeout_s": POSITIVE,
    "server.limits.keep_alive_s": Number(whole=True, low=0, note="0: idle keep-alive connections closed at once"),
    "server.limits.max_header_bytes": WHOLE_1,
    "server.limits.max_header_count": WHOLE_1,
    "server.limits.max_connections": WHOLE_1,
    "server.limits.max_connections_per_ip": WHOLE_1,
    "server.limits.refusal_burst": WHOLE_1,
    "server.limits.refusal_rate_per_s": POSITIVE,
    "server.limits.block_s": POSITIVE,
    "server.limits.max_sources": WHOLE_1,
    "server.limits.ipv6_source_prefix": Number(
        whole=True, low=MIN_IPV6_SOURCE_PREFIX, high=IPV6_BITS,
        note="64: an IPv6 source is its /64, one host's usual allocation; 128: each address"),
    "chain.allow_list_stake": NON_NEGATIVE,
    "chain.netuid": Number(whole=True, low=0, high=65535),  # a u16 on chain
    "chain.min_stake": NON_NEGATIVE,
    "chain.metagraph_refresh_s": POSITIVE,
    "jobs.max_queue": WHOLE_1,
    "jobs.worker_start_timeout_s": POSITIVE,
    "jobs.worker_check_s": POSITIVE,
    "jobs.download_concurrency": WHOLE_1,
    "jobs.clip_fps_assumed": WHOLE_1,
    "jobs.result_ttl_s": POSITIVE,
    "jobs.oom_retry_tile_size": WHOLE_1,
    "jobs.deadline_margin_s": NON_NEGATIVE,
    "jobs.organic_timeout_s": POSITIVE,
    "jobs.long_clip_frames": WHOLE_1,
    "jobs.progress_log_s": Number(whole=False, low=0, note="0: off"),
    "jobs.calibration.weight": Number(whole=False, above=0, high=1),
    "jobs.calibration.min_factor": Number(whole=False, above=0, high=1),
    "jobs.calibration.max_factor": Number(whole=False, low=1),
    "jobs.calibration.min_frames": WHOLE_0,
    "jobs.test_hooks.delay_s": NON_NEGATIVE,
    "cluster.num_gpus": NON_NEGATIVE,
    "cluster.num_cpus": NON_NEGATIVE,
    "cluster.resources.*": POSITIVE,
    "cluster.max_restarts": Number(whole=True, low=-1, note="-1: always"),
    "cluster.lost_clip_retries": WHOLE_0,
    "cluster.result_chunk_bytes": Number(whole=True, low=65536),
    "tasks.*.width": WHOLE_1,
    "tasks.*.height": WHOLE_1,
    "tasks.*.scale": WHOLE_1,
    "fetch.max_bytes": WHOLE_1,
    "fetch.connect_timeout_s": POSITIVE,
    "fetch.read_timeout_s": POSITIVE,
    "fetch.total_timeout_s": POSITIVE,
    "fetch.max_redirects": WHOLE_0,
    "fetch.chunk_bytes": WHOLE_1,
    "fetch.max_frame_pixels": WHOLE_1,
    "storage.url_expiry_s": WHOLE_1,
    "storage.retention_s": WHOLE_1,
    "storage.cleanup_interval_s": POSITIVE,
    "upscaler.max_vram_gib": Number(whole=False, low=0, note="0: the whole card"),
    "upscaler.crf": CRF,
}


def check_numbers(raw: Mapping[str, Any], rules: Mapping[str, Number] = NUMBERS) -> None:
    """``ValueError`` for the first value in ``raw`` (the merged tables) that its rule (``NUMBERS``: the
    miner's) refuses."""
    for pattern, rule in rules.items():
        for key, value in _values(raw, pattern.split(".")):
            rule.check(key, value)


def _values(node: Any, parts: list[str], where: str = "") -> Iterator[tuple[str, Any]]:
    """Each ``(dotted key, value)`` under ``node`` that ``parts`` names (``*``: every key of that table)."""
    if not parts:
        yield where, node
        return
    if not isinstance(node, Mapping):
        return
    head, rest = parts[0], parts[1:]
    for key in (list(node) if head == "*" else [head] if head in node else []):
        yield from _values(node[key], rest, f"{where}.{key}" if where else key)
