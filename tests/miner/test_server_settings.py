"""``[server.limits]`` and ``[server.ops]`` values the server cannot work with are refused at start: ``flashvsr-miner``
(serving or ``doctor``) exits with status 2 and one line naming the key, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from miner.__main__ import check_server_settings, main
from miner.config import load_miner_config


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
