"""``flashvsr-miner``: run the Vidaio miner (HTTP server, GPU workers, storage).

    flashvsr-miner --config configs/local.toml --no-chain --weights random-small --port 8091
    flashvsr-miner doctor --config configs/local.toml    # check everything before going live
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import uvicorn

from miner.config import CONFIG_ENV, MinerConfig, load_miner_config
from miner.log import setup_logging

log = logging.getLogger("miner")


DOCTOR = "doctor"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``[doctor] [flags]``: ``args.command`` is ``"serve"`` or ``"doctor"`` (which also takes ``--allow-cpu``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    doctor = bool(argv) and argv[0] == DOCTOR
    if doctor:
        parser = argparse.ArgumentParser(
            prog="flashvsr-miner doctor", description="Check GPU, kernels, weights, encoder, wallet, port, "
            "open-file limit, storage and chain with the miner's configuration: one OK/FAIL/SKIP line each; "
            "exit status 1 on any FAIL.")
        parser.add_argument("--allow-cpu", action="store_true", help="no CUDA GPU is not a failure (tests, demos)")
    else:
        parser = argparse.ArgumentParser(prog="flashvsr-miner", description=__doc__.splitlines()[0],
                                         epilog="flashvsr-miner doctor [flags]: check the setup before going live")
    _add_config_flags(parser)
    args = parser.parse_args(argv[1:] if doctor else argv)
    args.command = DOCTOR if doctor else "serve"
    return args


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override configuration keys (serving and the doctor take the same)."""
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV), help="TOML file overriding configs/miner.toml")
    parser.add_argument("--no-chain", action="store_true", default=None,
                        help="accept only chain.allow_list hotkeys; never contact the chain")
    parser.add_argument("--host", help="listen address (server.host)")
    parser.add_argument("--port", type=int, help="listen port (server.port)")
    parser.add_argument("--public-url", help="URL validators reach us at (server.public_url)")
    parser.add_argument("--weights", help="upscaler weights: a model dir, auto, random, random-small")
    parser.add_argument("--device", action="append", dest="devices", help="worker device (repeatable), e.g. cuda:0")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per device)")
    parser.add_argument("--storage", choices=("local", "s3"), help="result storage backend")
    parser.add_argument("--publish", action="store_true", default=None, help="publish our endpoint on chain (ServeAxon)")
    parser.add_argument("--allow-private-urls", action="store_true", default=None,
                        help="let downloads reach loopback/private addresses (a local validator)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    parser.add_argument("--log-format", choices=("kv", "json"))


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Nested configuration tables from the flags that were given."""
    flags = {
        ("chain", "no_chain"): args.no_chain, ("server", "host"): args.host, ("server", "port"): args.port,
        ("server", "public_url"): args.public_url, ("upscaler", "weights"): args.weights,
        ("jobs", "devices"): args.devices, ("jobs", "workers"): args.workers, ("storage", "backend"): args.storage,
        ("chain", "publish"): args.publish, ("fetch", "allow_private_urls"): args.allow_private_urls,
        ("log", "level"): args.log_level, ("log", "format"): args.log_format,
    }
    tables: dict[str, Any] = {}
    for (section, key), value in flags.items():
        if value is not None:
            tables.setdefault(section, {})[key] = value
    return tables


def serve(config: MinerConfig) -> None:
    """Run until SIGTERM/SIGINT; uvicorn stops accepting, then the lifespan drains the workers."""
    from miner.server.app import create_app
    from miner.server.limits import uvicorn_options
    from miner.server.nofile import open_file_limit, raise_soft_limit
    from miner.server.wiring import authenticators

    app = create_app(config, authenticators(config))
    raise_soft_limit(open_file_limit(app.state.limits))  # before the workers start: they inherit it
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(config, app)))
    app.state.server = server  # the lifespan ends it when no worker starts
    server.run()
    if getattr(app.state, "start_error", None):
        first_line = app.state.start_error.splitlines()[0]  # a worker's traceback follows in the log
        print(f"flashvsr-miner: {first_line}", file=sys.stderr)
        raise SystemExit(2)


def check_server_settings(config: MinerConfig) -> None:
    """``[server.limits]`` and ``[server.ops]`` as the server will read them (``ValueError`` naming the key)."""
    from miner.server.limits import OpsAccess, ServerLimits

    ServerLimits.from_config(config)
    OpsAccess.from_config(config)


def main(argv: list[str] | None = None) -> int:
    """Serve, or run the doctor; 2 with one line on stderr when the configuration or the machine cannot
    start the miner (bad value, missing hotkey, busy port, an open-file limit too low, storage refusing
    writes)."""
    args = parse_args(argv)
    try:
        config = load_miner_config(args.config, overrides=cli_overrides(args))
        check_server_settings(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"flashvsr-miner: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == DOCTOR:
        from miner.doctor.checks import run_doctor

        setup_logging(args.log_level or "WARNING", config.get("log.format"))
        return run_doctor(config, allow_cpu=args.allow_cpu)
    from miner.doctor.start import start_problem  # no torch import: a refused start answers at once

    setup_logging(config.get("log.level"), config.get("log.format"))
    problem = start_problem(config)
    if problem is not None:
        print(problem.start_error(), file=sys.stderr)
        return 2
    log.info("configuration", extra={"fields": {"source": config.source, "merged": config.as_json()}})
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
