"""Locating and reading the project's TOML configuration files (``configs/``)."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_DIR_ENV = "FLASHVSR_CONFIG_DIR"


def config_dir() -> Path:
    """The directory holding the TOML configs: ``$FLASHVSR_CONFIG_DIR`` or the repository's ``configs/``."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "configs"


def config_path(name: str) -> Path:
    """Path of ``configs/<name>`` (``name`` may omit the ``.toml`` suffix)."""
    filename = name if name.endswith(".toml") else f"{name}.toml"
    return config_dir() / filename


@lru_cache(maxsize=None)
def _load_cached(path: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def load_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML config by name (``"upscaler"``) or by path; results are cached per path."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix == ".toml" and candidate.exists() else config_path(str(name_or_path))
    if not path.exists():
        raise FileNotFoundError(f"configuration file not found: {path} (set {CONFIG_DIR_ENV} to override)")
    return _load_cached(str(path.resolve()))
