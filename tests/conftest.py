"""Shared fixtures: small random checkpoints written once per session in the official formats."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from upscaler.weights import WeightFiles, write_random_checkpoints


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], WeightFiles]:
    """``small_checkpoints(version)`` -> the five files of the "small" preset for "v1" or "v1.1"
    (written on first use, read-only for tests: copy them before corrupting)."""
    written: dict[str, WeightFiles] = {}

    def get(version: str = "v1.1") -> WeightFiles:
        if version not in written:
            directory: Path = tmp_path_factory.mktemp(f"small-{version}")
            written[version] = write_random_checkpoints(directory, "small", version, seed=0)
        return written[version]

    return get
