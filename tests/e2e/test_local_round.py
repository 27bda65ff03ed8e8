"""The main command's path end to end on CPU: ``scripts/run_local.py --random-weights --small`` starts the
real miner (subprocess, HTTP, auth, queue, worker, local storage), runs the mock validator against it,
and stops it. Asserted from the JSON report and the miner's log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run_local(tmp_path: Path, *args: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    """Run the local round; (process, report JSON, the miner's JSON log lines)."""
    keep, report = tmp_path / "run", tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run_local.py"), "--random-weights", "--small",
                           "--keep", str(keep), "--report", str(report), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    data = json.loads(report.read_text()) if report.exists() else {}
    log_lines = []
    for line in (keep / "miner.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                log_lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return proc, data, log_lines


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def _assert_served_by_miner(clip: dict, miner_url: str, files_dir: Path) -> None:
    url = urlsplit(clip["result_url"])
    assert f"{url.scheme}://{url.netloc}" == miner_url and url.path.startswith("/files/"), clip["result_url"]
    query = parse_qs(url.query)
    assert query.get("sig") and query.get("exp"), f"result URL is not signed: {clip['result_url']}"
    assert any(p.is_file() for p in files_dir.rglob(Path(url.path).name)), "result not in the miner's local storage"


def test_local_round_legacy_with_organic_job(tmp_path: Path) -> None:
    proc, report, log = run_local(tmp_path, "--transport", "legacy")
    assert proc.returncode == 0, _explain(proc)
    assert report["label"].startswith("RANDOM small weights"), "random weights must be labelled as such"
    assert report["settings"]["quality_gate"] is False
    assert "RESULT: PASS" in proc.stdout and "RANDOM small weights" in proc.stdout
    summary = report["summary"]
    assert summary["ok"] and summary["clips"] == summary["passed"] == 3  # 2 synthetic + 1 organic

    (validator,) = report["validators"]
    assert validator["transport"] == "legacy"
    calls = {c["name"]: c for c in validator["calls"]}
    assert calls["TaskWarrant"]["status"] == 200 and calls["TaskWarrant"]["value"] == 2
    assert calls["LengthCheck"]["status"] == 200 and calls["LengthCheck"]["value"] in (5, 10)
    synthetic, organic = validator["rounds"]
    assert synthetic["kind"] == "synthetic" and synthetic["status"] == 200 and synthetic["met_deadline"]
    assert synthetic["deadline_s"] == 135.0
    assert organic["kind"] == "organic" and organic["message"] == "completed" and organic["polls"] >= 1

    miner_url = report["settings"]["miner_url"]
    for clip in synthetic["clips"] + organic["clips"]:
        checks = clip["score"]["checks"]
        assert clip["passed"] and all(c["ok"] for c in checks if c["enforced"]), clip
        # random weights: the quality checks are measured and reported, not enforced
        assert {c["name"] for c in checks if not c["enforced"]} == {"chroma", "vmaf"}
        assert {"geometry", "frames", "fps", "encoding", "size"} <= {c["name"] for c in checks if c["enforced"]}, checks
        assert clip["input_downloads"] >= 1, "the miner must fetch the input over HTTP"
        _assert_served_by_miner(clip, miner_url, tmp_path / "run" / "files")
        assert clip["baseline"]["ok"], "the bicubic baseline passes the same checks"

    tasks = [e for e in log if e.get("msg") == "task"]
    mine = [t for t in tasks if t.get("round_id") == synthetic["round_id"]]
    assert sorted(t["index"] for t in mine) == [0, 1], "the miner logs one line per clip of the round"
    assert all(t["caller"] == validator["hotkey"] and t["result"] == "ok" for t in mine), "verified caller"
    assert report["miner_tasks"], "the report carries the miner's per-stage times"
    assert not [e for e in log if e.get("msg") == "request refused"]


def test_three_validators_at_once_over_btauth(tmp_path: Path) -> None:
    proc, report, log = run_local(tmp_path, "--transport", "btauth", "--concurrency", "3", "--no-organic")
    assert proc.returncode in (0, 1), _explain(proc)
    assert len(report["validators"]) == 3
    hotkeys = {v["hotkey"] for v in report["validators"]}
    assert len(hotkeys) == 3, "each validator signs with its own wallet"
    miner_url = report["settings"]["miner_url"]
    served = 0
    for validator in report["validators"]:
        assert validator["transport"] == "btauth"
        assert all(c["status"] == 200 for c in validator["calls"]), validator["calls"]
        (rnd,) = validator["rounds"]
        assert rnd["status"] in (200, 422), f"the miner must answer every round, got {rnd['status']}: {rnd['message']}"
        assert len(rnd["clips"]) == 2
        for clip in rnd["clips"]:
            assert clip["result_url"] or clip["error"], "every clip has a result or an error"
            if clip["result_url"]:
                served += 1
                assert clip["passed"], clip
                _assert_served_by_miner(clip, miner_url, tmp_path / "run" / "files")
            else:
                assert clip["error"].split(":")[0] in {"refused", "deadline"}, f"unclean failure: {clip['error']}"
    assert served >= 1
    callers = {t["caller"] for t in log if t.get("msg") == "task"}
    assert callers <= hotkeys and callers, "tasks run only for the verified validators"
    assert proc.returncode == (0 if served == 6 else 1)
