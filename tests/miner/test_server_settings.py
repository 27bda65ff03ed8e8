"""``[server.limits]`` and ``[server.ops]`` values the server cannot work with are refused at start: ``flashvsr-miner``
(serving or ``doctor``) exits with status 2 and one line naming the key, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from miner.__main__ import check_server_settings, main
from miner.config import load_miner_config
from miner.server.limits import OpsAccess


def _start(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str) -> tuple[int, str]:
    path = tmp_path / "miner.toml"
    path.write_text(toml)
    status = main(["--config", str(path)])
    return status, capsys.readouterr().err


def test_the_embedded_defaults_pass() -> None:
    check_server_settings(load_miner_config(None))


@pytest.mark.parametrize("header_timeout_s, keep_alive_s", [(5.0, 5), (2.0, 5)])
def test_a_header_deadline_not_outlasting_keep_alive_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 header_timeout_s: float, keep_alive_s: int) -> None:
    """An idle keep-alive connection runs both timers: the header deadline must not close it first (that is
    charged to its source as a slow-header refusal, and a validator reusing connections would end up blocked)."""
    status, err = _start(tmp_path, capsys, f"[server.limits]\nheader_timeout_s = {header_timeout_s}\n"
                                           f"keep_alive_s = {keep_alive_s}\n")
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"flashvsr-miner: configuration error: server.limits.header_timeout_s ({header_timeout_s:g}) "
                          f"must exceed server.limits.keep_alive_s ({keep_alive_s})"), err


@pytest.mark.parametrize("setting, message", [
    ("keep_alive_s = -1", "server.limits.keep_alive_s must be a whole number of at least 0 "
                          "(0: idle keep-alive connections closed at once), got -1"),
    ("block_s = 0.0", "server.limits.block_s must be a finite number greater than 0, got 0.0"),
    ("block_s = -60.0", "server.limits.block_s must be a finite number greater than 0, got -60.0"),
    ("header_timeout_s = inf", "server.limits.header_timeout_s must be a finite number greater than 0, got inf"),
    ("body_timeout_s = nan", "server.limits.body_timeout_s must be a finite number greater than 0, got nan"),
    ("block_s = inf", "server.limits.block_s must be a finite number greater than 0, got inf"),
    ("max_sources = 1.5", "server.limits.max_sources must be a whole number of at least 1, got 1.5"),
    ("refusal_burst = true", "server.limits.refusal_burst must be a whole number of at least 1, got True"),
])
def test_negative_zero_and_infinite_limits_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       setting: str, message: str) -> None:
    """Before: a negative keep_alive_s, a block_s of 0 or less (blocks that never hold) and NaN or infinite
    durations (TOML's nan/inf: a header deadline that never fires) started the server."""
    status, err = _start(tmp_path, capsys, f"[server.limits]\n{setting}\n")
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"flashvsr-miner: configuration error: {message}"), err


@pytest.mark.parametrize("setting, message", [
    ("open_in_flight = 300", "server.limits.open_in_flight (300) must be at most server.limits.max_in_flight (256)"),
    ("max_connections = 256", "server.limits.max_connections must exceed server.limits.max_in_flight"),
])
def test_limits_read_together_are_checked_together(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   setting: str, message: str) -> None:
    status, err = _start(tmp_path, capsys, f"[server.limits]\n{setting}\n")
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"flashvsr-miner: configuration error: {message}"), err


@pytest.mark.parametrize("prefix", [0, 16, 129])
def test_an_ipv6_source_prefix_outside_32_to_128_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             prefix: int) -> None:
    status, err = _start(tmp_path, capsys, f"[server.limits]\nipv6_source_prefix = {prefix}\n")
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("flashvsr-miner: configuration error: server.limits.ipv6_source_prefix must be a whole "
                          "number from 32 to 128 (64: an IPv6 source is its /64, one host's usual allocation; "
                          f"128: each address), got {prefix}"), err


def test_no_keep_alive_is_accepted() -> None:
    """keep_alive_s = 0 (idle keep-alive connections closed at once) is what the gate tests run with."""
    check_server_settings(load_miner_config(overrides={"server": {"limits": {"keep_alive_s": 0}}}, environ={}))


@pytest.mark.parametrize("token", ["секрет", "pässwort", "two words"])
def test_an_ops_token_no_header_can_carry_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      token: str) -> None:
    """Before: a non-latin-1 token passed the start and every /health or /metrics request from outside
    server.ops.allow was a 500 (encoding it to compare with the header raised)."""
    status, err = _start(tmp_path, capsys, f'[server.ops]\ntoken = "{token}"\n')
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("flashvsr-miner: configuration error: server.ops.token must be printable ASCII"), err
    assert "secrets.token_urlsafe" in err
    with pytest.raises(ValueError, match="server.ops.token"):
        OpsAccess(allow=(), token=token)
    assert OpsAccess(allow=(), token="Zx-9_a.b~c+d/e=").token  # RFC 6750 bearer characters pass
