"""Every numeric key of the mock validator's settings has a declared type and range
(``miner.mock_validator.settings.NUMBERS``), checked at load like the miner's."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from miner.mock_validator.settings import NUMBERS, load_settings
from tests.config_leaves import numeric_leaves

REPO = Path(__file__).resolve().parents[2]
SHIPPED = tomllib.loads((REPO / "configs" / "mock_validator.toml").read_text())


def _rule_for(key: str) -> str | None:
    """The ``NUMBERS`` pattern naming ``key`` (``*``: any one part)."""
    parts = key.split(".")
    for pattern in NUMBERS:
        names = pattern.split(".")
        if len(names) == len(parts) and all(n in ("*", p) for n, p in zip(names, parts)):
            return pattern
    return None


def test_every_numeric_key_of_the_shipped_toml_has_a_rule_of_its_type() -> None:
    leaves = dict(numeric_leaves(SHIPPED))
    missing = sorted(key for key in leaves if _rule_for(key) is None)
    assert not missing, f"numeric keys of configs/mock_validator.toml without a rule: {missing}"
    for key, value in leaves.items():
        rule = NUMBERS[_rule_for(key)]
        assert rule.accepts(value), (key, value, rule.allowed)
        assert not rule.whole or isinstance(value, int), (key, "a whole-number rule for a float default")
    load_settings()


@pytest.mark.parametrize(("table", "message"), [
    ({"round": {"clips": 0}}, "round.clips must be a whole number of at least 1, got 0"),
    ({"timeouts": {"upscale_s": float("nan")}}, "timeouts.upscale_s must be a finite number greater than 0, got nan"),
    ({"checks": {"vmaf_threshold": 150}}, "checks.vmaf_threshold must be a finite number from 0 to 100, got 150"),
    ({"checks": {"size_multipliers": {"4": "20"}}}, "checks.size_multipliers.4 must be a finite number greater than 0"),
    ({"round": {"clipz": 3}}, "unknown mock validator setting round.clipz"),
])
def test_a_bad_value_is_refused_naming_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", "\\.")):
        load_settings(overrides=table)


def test_the_command_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mock.toml"
    config.write_text("[encode]\ninput_crf = 60\n")
    proc = subprocess.run([sys.executable, "-m", "miner.mock_validator", "--miner-url", "http://127.0.0.1:9", "--miner-hotkey", "5" * 48,
                           "--config", str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "flashvsr-mock-validator: error: encode.input_crf must be a whole number from 0 to 51, got 60")
