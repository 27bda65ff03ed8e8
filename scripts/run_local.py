"""The one-command local run: start the miner with local defaults, run the mock validator against it,
print the report, stop the miner.

    python scripts/run_local.py --random-weights --small          # CPU, random small weights, 2 x 1 s SD2HD
    python scripts/run_local.py --weights ~/FlashVSR-v1.1         # real weights from a local directory

The miner runs as a subprocess (``python -m miner``) on 127.0.0.1 with local result storage, ``--no-chain``
and an allow-list holding exactly the mock validators' hotkeys, all in a temporary directory. Exit status:
the mock validator's (0 = every clip passed every hard check), 3 when no weights are available.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from miner.mock_validator import wallets  # noqa: E402
from miner.mock_validator.__main__ import build_parser, execute, finish  # noqa: E402

log = logging.getLogger("run_local")

MINER_WALLET = "local-miner"
NO_WEIGHTS = 3
RANDOM_LABEL = "RANDOM small weights: the whole path runs, quality numbers say nothing about FlashVSR"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run_local", description=__doc__.splitlines()[0])
    w = p.add_mutually_exclusive_group()
    w.add_argument("--random-weights", action="store_true", help="random small weights (CPU-friendly, labelled as such)")
    w.add_argument("--weights", default="auto",
                   help="a FlashVSR weights dir, auto (HF cache, then download), random (real shapes), random-small")
    p.add_argument("--small", action="store_true", help="tiny clips for CPU runs")
    p.add_argument("--task", default="SD2HD", help="SD2HD, HD24K, SD24K, 4K28K")
    p.add_argument("--clips", type=int, help="clips per round (default 2 with --small, else 5)")
    p.add_argument("--seconds", type=float, help="clip length in seconds")
    p.add_argument("--rounds", type=int, default=1, help="synthetic rounds per validator")
    p.add_argument("--concurrency", type=int, default=1, help="mock validators at once (each its own wallet)")
    p.add_argument("--workers", type=int, help="clips of a round made / scored at once (default: round.workers)")
    p.add_argument("--transport", choices=("legacy", "btauth"), default="legacy")
    p.add_argument("--no-organic", action="store_true", help="skip the organic job + poll flow")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--keep", type=Path, help="keep the run's files (miner log, config, clips, results) in this dir")
    p.add_argument("--miner-arg", action="append", default=[], help="extra flag for the miner (repeatable)")
    p.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for the miner's /health")
    return p.parse_args(argv)


def weights_spec(args: argparse.Namespace) -> tuple[str, str]:
    """(spec for the miner, report label); exits with a plain message when real weights are unavailable."""
    if args.random_weights:
        return "random-small", RANDOM_LABEL
    spec = args.weights
    if spec in ("random", "random-small"):
        return spec, f"RANDOM weights ({spec}): the whole path runs, quality numbers say nothing about FlashVSR"
    from upscaler.weights import WeightsError, resolve_weights
    try:
        files = resolve_weights(spec, model_version="v1.1", variant="tiny")
    except WeightsError as exc:
        print(f"No FlashVSR weights available ({exc}).\n"
              "Give a local weights directory with --weights DIR, or run online so they can be downloaded, "
              "or add --random-weights to run the whole path with random small weights (labelled as such).",
              file=sys.stderr)
        raise SystemExit(NO_WEIGHTS) from None
    return spec, f"FlashVSR weights: {files.label}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def miner_config(root: Path, port: int, weights: str, allow_list: list[str]) -> Path:
    """A miner config file: loopback, no chain, this run's allow-list and wallet, local storage and the
    throughput calibration under ``root``."""
    path = root / "miner.toml"
    path.write_text("\n".join([
        "[server]", 'host = "127.0.0.1"', f"port = {port}", "shutdown_grace_s = 10.0",
        "[chain]", "no_chain = true", f"allow_list = {json.dumps(allow_list)}",
        f'wallet_name = "{MINER_WALLET}"', 'wallet_hotkey = "default"', f"wallet_path = {json.dumps(str(root / 'wallets'))}",
        "[jobs]", f"work_dir = {json.dumps(str(root / 'miner-work'))}",
        "[jobs.calibration]", f"state_path = {json.dumps(str(root / 'calibration.json'))}",
        "[fetch]", "allow_private_urls = true",
        "[storage]", 'backend = "local"',
        "[storage.local]", f"dir = {json.dumps(str(root / 'files'))}",
        "[upscaler]", f'weights = "{weights}"',
        "[log]", 'format = "json"', ""]))
    return path


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` until 200; fails fast when the miner process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the miner exited with status {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the miner was not healthy at {url} after {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGTERM (graceful shutdown), then SIGKILL after ``grace`` seconds; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("miner did not stop in %.0f s; killing it", grace)
            proc.kill()
            proc.wait()
    return proc.returncode


def run(args: argparse.Namespace, root: Path) -> int:
    spec, label = weights_spec(args)
    validators = wallets.validator_wallets(root / "wallets", args.concurrency)
    miner_hotkey = wallets.load_or_create(root / "wallets", MINER_WALLET).hotkey.ss58_address
    port = free_port()
    config = miner_config(root, port, spec, [w.hotkey.ss58_address for w in validators])
    miner_log = root / "miner.log"
    url = f"http://127.0.0.1:{port}"
    print(f"starting the miner on {url} (weights: {spec}); log: {miner_log}", flush=True)
    with miner_log.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "miner", "--config", str(config), *args.miner_arg],
                                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            started = time.monotonic()
            wait_healthy(f"{url}/health", proc, args.start_timeout)
            print(f"miner healthy after {time.monotonic() - started:.1f} s", flush=True)
            argv = ["--miner-url", url, "--miner-hotkey", miner_hotkey, "--task", args.task,
                    "--transport", args.transport, "--wallet-path", str(root / "wallets"),
                    "--concurrency", str(args.concurrency), "--rounds", str(args.rounds),
                    "--workdir", str(root / "validator"), "--label", label]
            argv += ["--small"] if args.small else []
            argv += ["--no-quality-gate"] if spec.startswith("random") else []
            argv += ["--no-organic"] if args.no_organic else []
            argv += ["--clips", str(args.clips)] if args.clips else []
            argv += ["--seconds", str(args.seconds)] if args.seconds else []
            argv += ["--workers", str(args.workers)] if args.workers is not None else []
            argv += ["--report", str(args.report)] if args.report else []
            validator_args = build_parser().parse_args(argv)
            report = execute(validator_args)
        except RuntimeError as exc:
            print(f"run_local: {exc}; miner log follows:\n{miner_log.read_text(errors='replace')[-4000:]}",
                  file=sys.stderr)
            return 1
        finally:
            code = stop(proc)
            print(f"miner stopped (exit status {code}); log: {miner_log}", flush=True)
    report.miner_tasks = miner_tasks(miner_log)
    return finish(report, validator_args)


def miner_tasks(miner_log: Path) -> list[dict]:
    """The miner's per-clip ``task`` lines (JSON log format), in order."""
    tasks = []
    for line in miner_log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("msg") == "task":
                tasks.append({k: v for k, v in entry.items() if k not in ("ts", "level", "logger", "msg")})
    return tasks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="flashvsr-local-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
