"""``flashvsr-mock-validator``: send Vidaio-style rounds to a miner, score the results, print a report.

    flashvsr-mock-validator --miner-url http://127.0.0.1:8091 --miner-hotkey 5F... --task SD2HD --small

Exit status: 0 when every clip passed every hard check, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from miner.mock_validator import wallets
from miner.mock_validator.clips import source_files
from miner.mock_validator.metrics import vmaf_available
from miner.mock_validator.report import Report
from miner.mock_validator.runner import TRANSPORTS, RunOptions, run_validators
from miner.mock_validator.settings import load_settings

log = logging.getLogger("miner.mock_validator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashvsr-mock-validator", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML file overriding configs/mock_validator.toml")
    p.add_argument("--miner-url", default="http://127.0.0.1:8091", help="base URL of the miner")
    p.add_argument("--miner-hotkey", required=True, help="the miner's hotkey (ss58): requests are signed for it")
    p.add_argument("--task", help="SD2HD, HD24K, SD24K or 4K28K (round.task)")
    p.add_argument("--clips", type=int, help="clips per synthetic round (round.clips; 5 like the validator)")
    p.add_argument("--seconds", type=float, help="clip length in seconds (round.clip_seconds)")
    p.add_argument("--small", action="store_true", help="tiny clips for CPU runs ([small] preset)")
    p.add_argument("--rounds", type=int, help="synthetic rounds per validator")
    p.add_argument("--concurrency", type=int, help="validators at once, each with its own wallet")
    p.add_argument("--workers", type=int, help="clips of a round made / scored at once (round.workers; 0 = auto)")
    p.add_argument("--timeout", type=float, help="VideoUpscalingProtocol timeout in seconds (135 like the validator)")
    p.add_argument("--transport", choices=TRANSPORTS, default="legacy", help="bittensor-10 synapses or btauth/1")
    p.add_argument("--source", type=Path, help="directory of videos to cut reference clips from (else procedural)")
    p.add_argument("--no-organic", action="store_true", help="skip the organic job + poll flow")
    p.add_argument("--no-quality-gate", action="store_true",
                   help="report VMAF and chroma but do not fail clips on them (a miner on random weights)")
    p.add_argument("--no-baseline", action="store_true", help="skip the bicubic baseline")
    p.add_argument("--max-size-mb", type=int, help="maximum_optimized_size_mb of the payload")
    p.add_argument("--wallet-path", type=Path, help="validator wallets directory (created; default: a temp dir)")
    p.add_argument("--wallet-prefix", default=wallets.DEFAULT_PREFIX, help="validator wallet names: <prefix>0, 1, ...")
    p.add_argument("--workdir", type=Path, help="where clips and results are kept (default: a temp dir, removed)")
    p.add_argument("--label", default="", help="a label for the report (e.g. which weights the miner runs)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--seed", type=int, help="content and sampling seed")
    p.add_argument("--log-level", default="INFO")
    return p


def options(args: argparse.Namespace, settings: dict) -> RunOptions:
    """Flags over the settings; ``--small`` changes the defaults of clip count and length."""
    rnd = settings["round"]
    small = settings["small"] if args.small else {}
    sources = tuple(source_files(args.source)) if args.source else ()
    return RunOptions(
        miner_url=args.miner_url, miner_hotkey=args.miner_hotkey, task=args.task or rnd["task"],
        clips=args.clips or int(small.get("clips", rnd["clips"])),
        seconds=args.seconds or float(small.get("clip_seconds", rnd["clip_seconds"])),
        small=args.small, rounds=args.rounds or int(rnd["rounds"]), organic=bool(rnd["organic"]) and not args.no_organic,
        transport=args.transport, timeout_s=args.timeout or float(settings["timeouts"]["upscale_s"]),
        max_size_mb=args.max_size_mb or int(rnd["maximum_optimized_size_mb"]),
        seed=int(rnd["seed"]) if args.seed is None else args.seed,
        baseline=bool(settings["metrics"]["baseline"]) and not args.no_baseline, sources=sources,
        quality_gate=not args.no_quality_gate, workers=int(rnd["workers"]) if args.workers is None else args.workers)


def execute(args: argparse.Namespace) -> Report:
    """Run the validators; the report."""
    settings = load_settings(args.config)
    opts = options(args, settings)
    if settings["metrics"]["vmaf"] and not vmaf_available():
        print("note: vmaf-torch is not installed (pip install -e .[score]); VMAF and its threshold are skipped",
              file=sys.stderr)
    concurrency = args.concurrency or int(settings["round"]["concurrency"])
    with tempfile.TemporaryDirectory(prefix="mock-validator-") as tmp:
        wallet_path = args.wallet_path or Path(tmp) / "wallets"
        validator_wallets = wallets.validator_wallets(wallet_path, concurrency, args.wallet_prefix)
        workdir = args.workdir or Path(tmp) / "work"
        return asyncio.run(run_validators(validator_wallets, opts, settings, workdir, args.label or "mock validator"))


def finish(report: Report, args: argparse.Namespace) -> int:
    """Print the report, write its JSON when asked; the exit status."""
    print(report.table())
    if args.report:
        report.write(args.report)
        print(f"report written to {args.report}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return finish(execute(args), args)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"flashvsr-mock-validator: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
