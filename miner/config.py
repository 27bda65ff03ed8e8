"""The miner's settings: ``configs/miner.toml`` defaults, an optional file, environment, CLI flags.

Precedence (lowest first): the embedded ``configs/miner.toml``; a file passed with ``--config``
(any subset of keys); environment variables ``FLASHVSR_MINER_<SECTION>_<KEY>`` and the reference
miner's ``MINER_STORAGE_S3_*`` names; explicit overrides (CLI flags).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from miner.config_numbers import check_numbers, quoted_number_hint
from miner.protocol.tasks import UpscalingTask
from upscaler.configfiles import config_path, load_config
from upscaler.settings import load_settings

ENV_PREFIX = "FLASHVSR_MINER_"
FREE_TABLES = ("tasks", "cluster.resources")  # tables whose keys are the operator's names, not ours
CONFIG_ENV = "FLASHVSR_MINER_CONFIG"  # a config file path, read by the CLI (not a key)

# The reference Vidaio miner's environment names, mapped onto our keys.
REFERENCE_ENV = {
    "MINER_STORAGE_S3_BUCKET_NAME": ("storage", "s3", "bucket"),
    "MINER_STORAGE_S3_ENDPOINT_URL": ("storage", "s3", "endpoint_url"),
    "MINER_STORAGE_S3_ENDPOINT": ("storage", "s3", "endpoint_url"),
    "MINER_STORAGE_S3_REGION": ("storage", "s3", "region"),
    "MINER_STORAGE_S3_ACCESS_KEY_ID": ("storage", "s3", "access_key_id"),
    "MINER_STORAGE_S3_SECRET_ACCESS_KEY": ("storage", "s3", "secret_access_key"),
    "MINER_STORAGE_S3_PRESIGNED_EXPIRY": ("storage", "url_expiry_s"),
    "MINER_STORAGE_OBJECT_TTL_SECONDS": ("storage", "retention_s"),
}


@dataclass(frozen=True)
class TaskGeometry:
    """Output size and upscale factor of one Vidaio task type."""

    width: int
    height: int
    scale: int

    def target_for(self, in_width: int, in_height: int, tolerance: int = 8) -> tuple[int, int]:
        """The output size for an input clip: the task's nominal size when ``input x scale`` is
        within ``tolerance`` pixels of it (the validator's reference), else ``input x scale``
        (a non-standard source, or the local demo's small clips)."""
        scaled = (in_width * self.scale, in_height * self.scale)
        if abs(scaled[0] - self.width) <= tolerance and abs(scaled[1] - self.height) <= tolerance:
            return (self.width, self.height)
        return scaled


@dataclass(frozen=True)
class MinerConfig:
    """The merged configuration as nested plain tables, with typed accessors for hot paths."""

    raw: dict[str, Any]
    source: str = "embedded"
    tasks: dict[str, TaskGeometry] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """One top-level table (``server``, ``jobs``, ...)."""
        return self.raw[name]

    def get(self, dotted: str) -> Any:
        """A value by dotted path, e.g. ``config.get("storage.s3.bucket")``."""
        node: Any = self.raw
        for part in dotted.split("."):
            node = node[part]
        return node

    @property
    def public_url(self) -> str:
        """Base URL validators use to reach this miner."""
        server = self.raw["server"]
        if server["public_url"]:
            return str(server["public_url"]).rstrip("/")
        host = "127.0.0.1" if server["host"] in ("0.0.0.0", "::", "") else server["host"]
        return f"http://{host}:{server['port']}"

    @property
    def upscaler_overrides(self) -> dict[str, Any]:
        """The ``[upscaler]`` keys a worker passes to ``upscaler.settings.load_settings``."""
        upscaler = self.raw["upscaler"]
        return {key: upscaler[key] for key in ("weights", "model_version", "dtype", "kv_cache_dtype", "compile",
                                               "precision", "fp8_layers", "fp8_fast_accum", "fp8_attention",
                                               "max_vram_gib", "throughput")}

    def as_json(self) -> str:
        """The merged configuration with secrets masked (for the start-up log)."""
        masked = copy.deepcopy(self.raw)
        masked["storage"]["local"]["secret"] = "***" if masked["storage"]["local"]["secret"] else ""
        masked["storage"]["s3"]["secret_access_key"] = "***" if masked["storage"]["s3"]["secret_access_key"] else ""
        masked["server"]["ops"]["token"] = "***" if masked["server"]["ops"]["token"] else ""
        return json.dumps(masked, sort_keys=True)


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str = "", *, coerce: bool = True) -> None:
    """Deep-merge ``update`` into ``base``; unknown keys are an error (typos must not pass silently).
    ``coerce``: strings (environment values) are read as the default's type; a TOML file's values are
    typed already, so a quoted number there stays a string and is refused with the key's rule."""
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if key not in base and where not in FREE_TABLES:
            raise ValueError(f"unknown miner configuration key {path!r}")
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, path, coerce=coerce)
        else:
            base[key] = _coerce(base.get(key), value, path) if coerce else value


def _coerce(default: Any, value: Any, path: str) -> Any:
    """Convert ``value`` (possibly an environment string) to the type of ``default``; a string that is no number
    stays a string, for ``check_numbers`` to refuse with the key's range."""
    if default is None or not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if value.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(default, (int, float)):
            return _number(type(default), value)
        if isinstance(default, list):
            return [item.strip() for item in value.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"configuration key {path}: cannot read {value!r} as {type(default).__name__}") from None
    return value


def _number(kind: type[int] | type[float], text: str) -> int | float | str:
    """``text`` read as ``kind``, or as a float where a whole number does not parse (``32.5``, ``nan``: the
    rules refuse them as numbers), or ``text`` itself when it is no number at all."""
    for read in (kind, float):
        try:
            return read(text)
        except ValueError:
            continue
    return text


def _env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Tables of overrides read from ``FLASHVSR_MINER_*`` and ``MINER_STORAGE_*`` variables."""
    overrides: dict[str, Any] = {}

    def put(path: tuple[str, ...], value: str) -> None:
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value

    for name, path in REFERENCE_ENV.items():
        if environ.get(name, "").strip():
            put(path, environ[name].strip())
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = _env_path(raw, name[len(ENV_PREFIX):].lower())
        if path is None:
            raise ValueError(f"environment variable {name} names no miner configuration key")
        put(path, value)
    return overrides


def _env_path(raw: dict[str, Any], rest: str) -> tuple[str, ...] | None:
    """Match ``server_port`` / ``storage_s3_bucket`` against the key tree (keys contain ``_``)."""
    for key, value in raw.items():
        if rest == key.lower() and not isinstance(value, dict):
            return (key,)
        if isinstance(value, dict) and rest.startswith(key.lower() + "_"):
            tail = _env_path(value, rest[len(key) + 1:])
            if tail is not None:
                return (key, *tail)
    return None


def load_miner_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> MinerConfig:
    """Merge the embedded defaults, ``path``, the environment and ``overrides`` (nested tables)."""
    defaults = load_config(config_path("miner"))
    raw = copy.deepcopy(defaults)
    raw["tasks"] = {  # Vidaio's task geometry lives in the protocol; [tasks] in a config file may override it
        task.value: {"width": task.output_size[0], "height": task.output_size[1], "scale": task.scale}
        for task in UpscalingTask
    }
    source = "embedded"
    if path is not None:
        _merge(raw, load_config(Path(path).expanduser()), coerce=False)
        source = str(path)
    environment = _env_overrides(raw, os.environ if environ is None else environ)
    workers = environment.get("jobs", {}).get("workers")
    if isinstance(workers, str) and workers.isdigit():  # its default "auto" is text: "2" here is the number 2
        environment["jobs"]["workers"] = int(workers)
    _merge(raw, environment)
    if overrides:
        _merge(raw, overrides)
    _check_types(raw, defaults, "")
    check_numbers(raw)
    tasks = {name: _task_geometry(name, spec) for name, spec in raw["tasks"].items()}
    config = MinerConfig(raw=raw, source=source, tasks=tasks)
    _validate(config)
    return config


def _task_geometry(name: str, spec: Any) -> TaskGeometry:
    """``tasks.<name>``, whose numbers ``check_numbers`` has checked; ``ValueError`` unless it has the three keys."""
    if not isinstance(spec, Mapping) or set(spec) != {"width", "height", "scale"}:
        raise ValueError(f"tasks.{name} must be a table of width, height and scale, got {spec!r}")
    return TaskGeometry(**spec)


def _validate(config: MinerConfig) -> None:
    """Raise ``ValueError`` naming the key and the allowed values for any value the miner would only
    trip over later (at start, or at the first request). Types and numbers are checked before."""
    for key, allowed in _CHOICES.items():
        value = config.get(key)
        if (value.upper() if key == "log.level" else value) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    public_url = config.get("server.public_url")
    if public_url and (urlsplit(public_url).scheme not in ("http", "https") or not urlsplit(public_url).hostname):
        raise ValueError(f"server.public_url must be \"\" or an http(s)://host[:port] URL, got {public_url!r}")
    storage = config.section("storage")
    if storage["backend"] == "s3" and not storage["s3"]["bucket"]:
        raise ValueError("storage.backend = 's3' needs storage.s3.bucket (or MINER_STORAGE_S3_BUCKET_NAME)")
    if storage["retention_s"] < storage["url_expiry_s"]:
        raise ValueError("storage.retention_s must be at least storage.url_expiry_s (URLs must not outlive files)")
    workers = config.get("jobs.workers")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"jobs.workers must be 'auto' or a positive number, got {workers!r}"
                         f"{quoted_number_hint(workers)}")
    _validate_cluster(config.section("cluster"), workers)
    for device in config.get("jobs.devices"):
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"jobs.devices entries must be 'cpu' or 'cuda:N', got {device!r}")
    for key in ("jobs.length_check_task", "jobs.warmup_tasks"):
        value = config.get(key)
        for name in [value] if isinstance(value, str) else value:
            if name not in config.tasks:
                raise ValueError(f"{key}: {name!r} is not a task type; choose from {', '.join(config.tasks)}")
    if not config.get("upscaler.weights").strip():
        raise ValueError("upscaler.weights must be 'auto', 'random', 'random-small' or a model directory, got ''")
    for key in ("upscaler.config", "upscaler.throughput"):
        try:
            load_config(config.get(key))
        except FileNotFoundError as exc:
            raise ValueError(f"{key}: {exc}") from None
    try:
        load_settings(config.get("upscaler.config"), **config.upscaler_overrides)
    except ValueError as exc:
        raise ValueError(f"upscaler.{exc}") from None


def _check_types(raw: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> None:
    """Every value has its default's type (``jobs.workers`` may be a number); numbers are left to
    ``check_numbers``, which also checks their range."""
    for key, default in defaults.items():
        path = f"{where}.{key}" if where else key
        value = raw[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{path} must be a table, got {value!r}")
            _check_types(value, default, path)
            continue
        if path == "jobs.workers" or (isinstance(default, (int, float)) and not isinstance(default, bool)):
            continue
        expected = type(default)
        if not isinstance(value, expected):
            raise ValueError(f"{path} must be {_TYPE_NAMES[expected]}, got {value!r}")
        if expected is list and not all(isinstance(item, str) for item in value):
            raise ValueError(f"{path} must be a list of strings, got {value!r}")


def _validate_cluster(cluster: Mapping[str, Any], workers: Any) -> None:
    """``[cluster]``: a known backend, and Ray installed when it is asked for."""
    if cluster["backend"] not in ("local", "ray"):
        raise ValueError(f"cluster.backend must be 'local' or 'ray', got {cluster['backend']!r}")
    if cluster["backend"] == "ray" and workers == "auto" and not cluster["num_gpus"] and not cluster["resources"]:
        raise ValueError("jobs.workers = 'auto' counts one actor per cluster.num_gpus GPUs or cluster.resources: "
                         "set one of them, or a number of workers")
    if cluster["backend"] == "ray" and not _installed("ray"):
        raise ValueError("cluster.backend = 'ray' needs Ray, which is not installed: "
                         "pip install -e '.[cluster]' (or set cluster.backend = 'local')")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


_TYPE_NAMES = {bool: "true or false", str: "a string", list: "a list of strings"}
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_CHOICES = {
    "storage.backend": ("local", "s3"),
    "log.format": ("kv", "json"),
    "log.level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "upscaler.variant": ("auto", "tiny", "tiny-long", "full"),
    "upscaler.codec": ("hevc",),  # Vidaio scores HEVC (or AV1); an H.264 answer scores 0
    "upscaler.preset": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                        "veryslow", "placebo"),
}
