"""Every numeric key of the miner's configuration has a declared type and range (``miner.config_numbers.NUMBERS``),
checked at load: TOML's ``nan``/``inf``, text from an environment override, a bool where a number belongs and
values out of range are refused in one line naming the key, the value and what is allowed."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from miner.config import load_miner_config
from miner.config_numbers import NUMBERS, Number, check_numbers
from miner.server.limits import ServerLimits
from tests.config_leaves import numeric_leaves

REPO = Path(__file__).resolve().parents[2]
SHIPPED = tomllib.loads((REPO / "configs" / "miner.toml").read_text())
FIXED = {key: rule for key, rule in NUMBERS.items() if "*" not in key}  # the keys of configs/miner.toml


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for ``"a.b"``."""
    *tables, key = dotted.split(".")
    node: dict[str, Any] = {key: value}
    for name in reversed(tables):
        node = {name: node}
    return node


# ------------------------------------------------------------------------------------------------ the table


def test_every_numeric_key_of_the_shipped_toml_has_a_rule_of_its_type() -> None:
    """A numeric key added to configs/miner.toml without a rule would reach the code unchecked."""
    leaves = dict(numeric_leaves(SHIPPED))
    missing = sorted(set(leaves) - set(NUMBERS))
    assert not missing, f"numeric keys of configs/miner.toml without a rule in miner.config_numbers.NUMBERS: {missing}"
    wrong_kind = [key for key, value in leaves.items() if NUMBERS[key].whole != isinstance(value, int)]
    assert not wrong_kind, f"rules whose whole-number kind differs from the shipped default's type: {wrong_kind}"
    assert sorted(set(FIXED) - set(leaves)) == [], "rules for keys configs/miner.toml no longer has"


def test_the_shipped_defaults_pass() -> None:
    for key, value in numeric_leaves(SHIPPED):
        assert NUMBERS[key].accepts(value), (key, value, NUMBERS[key].allowed)
    check_numbers(SHIPPED)
    config = load_miner_config(None, environ={})
    assert config.get("jobs.deadline_margin_s") == SHIPPED["jobs"]["deadline_margin_s"]
    ServerLimits.from_config(config)


@pytest.mark.parametrize("rule, allowed", [
    (Number(whole=True, low=1, high=65535), "a whole number from 1 to 65535"),
    (Number(whole=True, low=1), "a whole number of at least 1"),
    (Number(whole=False, above=0), "a finite number greater than 0"),
    (Number(whole=False, above=0, high=1), "a finite number greater than 0 and at most 1"),
    (Number(whole=False, low=0, note="0: off"), "a finite number of at least 0 (0: off)"),
])
def test_what_a_rule_allows_reads_as_a_range(rule: Number, allowed: str) -> None:
    assert rule.allowed == allowed


@pytest.mark.parametrize("rule, accepted, refused", [
    (Number(whole=True, low=1, high=65535), [1, 8091, 65535], [0, 65536, 8091.0, True, "8091", None, math.nan]),
    (Number(whole=True, low=-1), [-1, 0, 10**30], [-2, False, 1.0]),
    (Number(whole=False, above=0), [1, 0.001, 1e300], [0, -1.0, math.nan, math.inf, -math.inf, True, "1.0"]),
    (Number(whole=False, low=0), [0, 0.0, 5], [-0.5, math.nan, math.inf, False, [], {}]),
    (Number(whole=False, above=0, high=1), [1, 0.5], [0, 1.0000001, math.nan]),
])
def test_a_rule_checks_type_finiteness_and_range(rule: Number, accepted: list[Any], refused: list[Any]) -> None:
    """A bool is no number (True == 1), a whole number is accepted where any finite number is, a float is not
    where a whole number is, NaN and the infinities never are."""
    for value in accepted:
        assert rule.accepts(value), value
        rule.check("some.key", value)
    for value in refused:
        assert not rule.accepts(value), value
        with pytest.raises(ValueError) as caught:
            rule.check("some.key", value)
        quoted = " (a number in quotes: write it without them)" if isinstance(value, str) else ""  # "8091", "1.0"
        assert str(caught.value) == f"some.key must be {rule.allowed}, got {value!r}{quoted}"


# -------------------------------------------------------------------------------------------- at load


@pytest.mark.parametrize("key", [key for key, rule in FIXED.items() if not rule.whole])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_number_key_refuses_nan_and_the_infinities(key: str, value: float) -> None:
    """Before, NaN passed every ``x <= 0`` check (server.default_timeout_s, the jobs timeouts and margins, fetch
    limits, upscaler.max_vram_gib ...) and infinity every lower bound."""
    with pytest.raises(ValueError) as caught:
        load_miner_config(overrides=_nested(key, value), environ={})
    assert str(caught.value) == f"{key} must be {NUMBERS[key].allowed}, got {value!r}"


@pytest.mark.parametrize("key", list(FIXED))
@pytest.mark.parametrize("value", [True, "ten"])
def test_every_key_refuses_a_bool_and_text(key: str, value: Any) -> None:
    with pytest.raises(ValueError) as caught:
        load_miner_config(overrides=_nested(key, value), environ={})
    assert str(caught.value) == f"{key} must be {NUMBERS[key].allowed}, got {value!r}"


@pytest.mark.parametrize("variable, message", [
    ("FLASHVSR_MINER_SERVER_DEFAULT_TIMEOUT_S=nan", "server.default_timeout_s must be a finite number greater than 0, "
                                                    "got nan"),
    ("FLASHVSR_MINER_JOBS_ORGANIC_TIMEOUT_S=infinity", "jobs.organic_timeout_s must be a finite number greater than 0, "
                                                       "got inf"),
    ("FLASHVSR_MINER_JOBS_MAX_QUEUE=32.5", "jobs.max_queue must be a whole number of at least 1, got 32.5"),
    ("FLASHVSR_MINER_FETCH_MAX_REDIRECTS=nan", "fetch.max_redirects must be a whole number of at least 0, got nan"),
    ("MINER_STORAGE_S3_PRESIGNED_EXPIRY=1h", "storage.url_expiry_s must be a whole number of at least 1, got '1h'"),
])
def test_environment_text_is_read_as_the_key_s_number_or_refused(variable: str, message: str) -> None:
    name, value = variable.split("=")
    with pytest.raises(ValueError) as caught:
        load_miner_config(environ={name: value})
    assert str(caught.value) == message


def test_environment_numbers_are_read_as_the_key_s_type() -> None:
    config = load_miner_config(environ={"FLASHVSR_MINER_JOBS_MAX_QUEUE": " 12 ",
                                        "FLASHVSR_MINER_UPSCALER_MAX_VRAM_GIB": "22.5",
                                        "FLASHVSR_MINER_SERVER_DEFAULT_TIMEOUT_S": "90"})
    assert config.get("jobs.max_queue") == 12 and config.get("upscaler.max_vram_gib") == 22.5
    assert config.get("server.default_timeout_s") == 90.0 and isinstance(config.get("server.default_timeout_s"), float)
    assert load_miner_config(environ={"FLASHVSR_MINER_JOBS_WORKERS": "2"}).get("jobs.workers") == 2  # default "auto"


def test_a_config_file_s_values_keep_their_toml_types(tmp_path: Path) -> None:
    """Only environment text is read as the key's type: a quoted number, bool or list in a file is refused."""
    cases = [("[jobs]\nmax_queue = \"12\"\n",
              "jobs.max_queue must be a whole number of at least 1, got '12' (a number in quotes: write it without them)"),
             ("[upscaler]\ncompile = \"true\"\n", "upscaler.compile must be true or false, got 'true'"),
             ("[jobs]\ndevices = \"cuda:0\"\n", "jobs.devices must be a list of strings, got 'cuda:0'"),
             ("[jobs]\nworkers = \"2\"\n",
              "jobs.workers must be 'auto' or a positive number, got '2' (a number in quotes: write it without them)")]
    for index, (toml, message) in enumerate(cases):
        config = tmp_path / f"miner{index}.toml"  # one file each: loaded TOML files are cached by path
        config.write_text(toml)
        with pytest.raises(ValueError) as caught:
            load_miner_config(config, environ={})
        assert str(caught.value) == message
    config = tmp_path / "miner-ok.toml"
    config.write_text("[jobs]\nmax_queue = 12\n")
    assert load_miner_config(config, environ={"FLASHVSR_MINER_SERVER_PORT": "8092"}).get("server.port") == 8092


@pytest.mark.parametrize("overrides, message", [
    ({"tasks": {"SD2HD": {"width": 0}}}, "tasks.SD2HD.width must be a whole number of at least 1, got 0"),
    ({"tasks": {"X": {"width": 640, "height": 360.0, "scale": 2}}},
     "tasks.X.height must be a whole number of at least 1, got 360.0"),
    ({"cluster": {"resources": {"h100": math.inf}}}, "cluster.resources.h100 must be a finite number greater than 0, "
                                                     "got inf"),
    ({"tasks": {"X": {"width": 640}}}, "tasks.X must be a table of width, height and scale, got {'width': 640}"),
    ({"tasks": {"SD2HD": 2}}, "tasks.SD2HD must be a table of width, height and scale, got 2"),
    ({"chain": {"netuid": 70000}}, "chain.netuid must be a whole number from 0 to 65535, got 70000"),  # a u16
])
def test_the_operator_s_own_tables_are_checked_too(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_miner_config(overrides=overrides, environ={})
    assert str(caught.value) == message


def test_server_limits_check_their_fields_with_the_same_rules() -> None:
    """ServerLimits built without a configuration (tests, tools) is checked by the table too."""
    with pytest.raises(ValueError, match=r"^server\.limits\.block_s must be a finite number greater than 0, got nan$"):
        ServerLimits(block_s=math.nan).validate()
    with pytest.raises(ValueError, match=r"^server\.limits\.max_sources must be a whole number of at least 1"):
        ServerLimits(max_sources=True).validate()


# ------------------------------------------------------------------------------- the real start, refused


@pytest.mark.parametrize("toml, environment, line", [
    ("[jobs]\ndeadline_margin_s = nan\n", {},
     "jobs.deadline_margin_s must be a finite number of at least 0, got nan"),
    ("[server]\nport = true\n", {}, "server.port must be a whole number from 1 to 65535, got True"),
    ("", {"FLASHVSR_MINER_FETCH_MAX_BYTES": "500MiB"},
     "fetch.max_bytes must be a whole number of at least 1, got '500MiB'"),
    ("", {"FLASHVSR_MINER_UPSCALER_MAX_VRAM_GIB": "inf"},
     "upscaler.max_vram_gib must be a finite number of at least 0 (0: the whole card), got inf"),
    ("jobs = 5\n", {}, "jobs must be a table, got 5"),
    ("[server]\nport = \"8091\"\n", {},
     "server.port must be a whole number from 1 to 65535, got '8091' (a number in quotes: write it without them)"),
])
def test_flashvsr_miner_refuses_to_start_in_one_line(tmp_path: Path, toml: str, environment: dict[str, str],
                                                    line: str) -> None:
    """``python -m miner --config FILE`` with the value in the file or the environment: status 2, one line on
    stderr, no traceback, nothing started."""
    config = tmp_path / "miner.toml"
    config.write_text(toml)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("FLASHVSR_MINER_", "MINER_"))}
    env.update(environment, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "miner", "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"flashvsr-miner: configuration error: {line}"]
