"""``flashvsr-miner doctor`` checks, each on its OK and FAIL path, for real: wallets made with bittensor,
a local storage directory and an S3-compatible moto server with credential checks on, sockets holding
ports, HTTP on loopback, PyAV encodes; and ``flashvsr-miner`` refusing bad starts (status 2, one
line on stderr, no traceback), an open-file hard limit too low among them (set in the child with setrlimit)."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import boto3
import httpx
import pytest
import torch
from fastapi import FastAPI

from miner.auth import BtAuth, LegacyAuth
from miner.chain import MetagraphView, StaticAllowList
from miner.config import MinerConfig, load_miner_config
from miner.doctor.chain import check_chain, registration_result
from miner.doctor.model import check_encoder, check_warmup, check_weights, warmup_result
from miner.doctor.network import check_health, check_port
from miner.doctor.nofile import check_nofile, nofile_result
from miner.doctor.result import DoctorContext, Status
from miner.doctor.runner import Step, run_bounded, run_steps
from miner.doctor.start import start_problem
from miner.doctor.storage import check_storage
from miner.doctor.system import check_attention, check_gpu, check_versions, versions_result
from miner.doctor.wallet import check_wallet
from miner.metrics import MinerMetrics
from miner.server.gate import Gate, source_guard
from miner.server.limits import OpsAccess, ServerLimits
from miner.server.nofile import OpenFileLimit, open_file_limit
from miner.server.ops import ops_router
from miner.storage import LocalStorage
from scripts.run_local import free_port, stop, wait_healthy
from tests.miner.test_storage import _ThreadedServer, serving_files

REPO = Path(__file__).resolve().parents[2]
BTCLI = Path(sys.executable).with_name("btcli")
BUCKET = "results"
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU paths of the GPU checks")
HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _config(tmp: Path, wallet_root: Path | None = None, wallet: str = "miner", **sections: dict[str, Any]) -> MinerConfig:
    """A configuration whose every path lies under ``tmp`` (wallets under ``wallet_root``)."""
    tables: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "chain": {"wallet_name": wallet, "wallet_path": str(wallet_root or tmp / "wallets"),
                  "snapshot_path": str(tmp / "metagraph.json")},
        "jobs": {"calibration": {"state_path": ""}},
        "storage": {"local": {"dir": str(tmp / "files")}},
        "upscaler": {"weights": "random-small"},
    }
    for name, table in sections.items():
        tables.setdefault(name, {}).update(table)
    return load_miner_config(overrides=tables, environ={})


def _context(config: MinerConfig, **found: Any) -> DoctorContext:
    return DoctorContext(config, allow_cpu=True, device="cpu", found=dict(found))


# --------------------------------------------------------------------------------------------- runner


def test_runner_bounds_time_and_turns_errors_into_failures() -> None:
    config = load_miner_config(environ={})

    def slow(context: DoctorContext):
        time.sleep(5)

    def broken(context: DoctorContext):
        raise RuntimeError("boom")

    began = time.monotonic()
    late = run_bounded(Step("slow", slow, 0.2), _context(config))
    assert time.monotonic() - began < 2
    assert late.status is Status.FAIL and "did not finish within 0.2 s" in late.detail
    error = run_bounded(Step("broken", broken, 5), _context(config))
    assert error.status is Status.FAIL and "RuntimeError: boom" in error.detail and error.fix


def test_run_steps_prints_one_line_per_check_and_exit_status(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = io.StringIO()
    ok = run_steps([Step("versions", check_versions, 10), Step("port", check_port, 10)], _context(config), out)
    lines = out.getvalue().splitlines()
    assert ok == 0 and [line.split()[:2] for line in lines[:2]] == [["OK", "versions"], ["OK", "port"]]
    out = io.StringIO()
    assert run_steps([Step("wallet", check_wallet, 10)], _context(config), out) == 1
    first = out.getvalue().splitlines()[0]
    assert first.startswith("FAIL wallet") and " -- fix: " in first


# ------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("overrides", "message"), [
    ({"server": {"port": 70000}}, "server.port must be a whole number from 1 to 65535, got 70000"),
    ({"server": {"shutdown_grace_s": "soon"}}, "server.shutdown_grace_s"),
    ({"server": {"public_url": "203.0.113.7:8091"}}, "server.public_url must be"),
    ({"chain": {"netuid": -1}}, "chain.netuid must be a whole number from 0 to 65535, got -1"),
    ({"chain": {"allow_list": [5]}}, "chain.allow_list must be a list of strings"),
    ({"jobs": {"max_queue": 0}}, "jobs.max_queue must be a whole number of at least 1, got 0"),
    ({"jobs": {"devices": ["gpu0"]}}, "jobs.devices entries must be 'cpu' or 'cuda:N'"),
    ({"jobs": {"warmup_tasks": ["SD8K"]}}, "jobs.warmup_tasks: 'SD8K' is not a task type; choose from SD2HD"),
    ({"jobs": {"calibration": {"weight": 2.0}}},
     "jobs.calibration.weight must be a finite number greater than 0 and at most 1, got 2.0"),
    ({"fetch": {"max_bytes": 1.5}}, "fetch.max_bytes must be a whole number of at least 1, got 1.5"),
    ({"log": {"level": "LOUD"}}, "log.level must be one of 'DEBUG', 'INFO'"),
    ({"upscaler": {"codec": "h264"}}, "upscaler.codec must be one of 'hevc'"),
    ({"upscaler": {"preset": "turbo"}}, "upscaler.preset must be one of 'ultrafast'"),
    ({"upscaler": {"crf": 60}}, "upscaler.crf must be a whole number from 0 to 51, got 60"),
    ({"upscaler": {"dtype": "int8"}}, "upscaler.dtype must be bf16, fp16 or fp32"),
    ({"upscaler": {"max_vram_gib": -1}},
     "upscaler.max_vram_gib must be a finite number of at least 0 (0: the whole card), got -1"),
    ({"upscaler": {"throughput": "no-such-table"}}, "upscaler.throughput: configuration file not found"),
    ({"metrics": {"enabled": 1}}, "metrics.enabled must be true or false"),
])
def test_config_values_are_validated_with_the_key_and_allowed_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_miner_config(overrides=overrides, environ={})
    assert message in str(caught.value)


# ------------------------------------------------------------------------------- GPU, kernels, model


@cpu_only
def test_gpu_check_fails_on_a_cpu_machine_unless_allowed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    failed = check_gpu(DoctorContext(config, allow_cpu=False, device="cpu"))
    assert failed.status is Status.FAIL and "no CUDA GPU" in failed.detail
    assert "the miner needs a CUDA GPU" in failed.fix and "--allow-cpu" in failed.fix
    assert check_gpu(DoctorContext(config, allow_cpu=True, device="cpu")).status is Status.SKIP


@cpu_only
def test_versions_and_attention_on_the_cpu(tmp_path: Path) -> None:
    context = _context(_config(tmp_path))
    versions = check_versions(context)
    assert versions.status is Status.OK and f"torch {torch.__version__}" in versions.detail
    attention = check_attention(context)
    assert attention.status is Status.OK and attention.detail.startswith("backend sdpa on cpu: max error")


def test_version_and_warm_up_verdicts() -> None:
    """The GPU-only FAIL paths of the versions and warm-up checks, decided from their figures."""
    assert versions_result("3.6.0", "18.1.0", cuda=True).status is Status.OK
    no_triton = versions_result(None, "18.1.0", cuda=True)
    assert no_triton.status is Status.FAIL and "Triton not installed" in no_triton.detail
    assert "scripts/main.sh" in no_triton.fix
    assert versions_result(None, "18.1.0", cuda=False).status is Status.OK
    assert versions_result("3.6.0", None, cuda=False).status is Status.FAIL
    assert warmup_result("29 frames", 5.0, 6.5, gpu=True).status is Status.OK
    late = warmup_result("29 frames", 7.0, 6.5, gpu=True)
    assert late.status is Status.FAIL and "slower than the planner assumes" in late.detail
    assert "flashvsr-profile" in late.fix and "configs/throughput.toml" in late.fix
    cpu = warmup_result("9 frames", 70.0, 1.0, gpu=False)
    assert cpu.status is Status.OK and cpu.detail.endswith("(CPU: reported only)")


def test_weights_missing_give_the_download_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    in_dir = check_weights(_context(_config(tmp_path, upscaler={"weights": str(empty)})))
    assert in_dir.status is Status.FAIL and "lacks" in in_dir.detail
    assert f"huggingface-cli download JunhaoZhuang/FlashVSR-v1.1 --local-dir {empty}" in in_dir.fix
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    context = _context(_config(tmp_path, upscaler={"weights": "auto"}))
    auto = check_weights(context)
    assert auto.status is Status.FAIL and "not in the Hugging Face cache" in auto.detail
    assert "huggingface-cli download JunhaoZhuang/FlashVSR-v1.1 " in auto.fix
    assert check_warmup(context).status is Status.SKIP


def test_warm_up_runs_what_a_worker_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The doctor loads the settings a worker loads (one helper, tiles chosen from usable memory), so its
    warm-up is tiled where a worker's run would be, and priced in that layout: usable memory read as
    5.4 GiB tiles a 512x256 output on the CPU."""
    import threading

    import miner.doctor.model as doctor_model
    from miner.jobs.worker import WorkerConfig, WorkerCore, worker_settings
    from upscaler import vram
    from upscaler.tile_plan import plan_layout

    config = _config(tmp_path)
    context = _context(config)
    assert check_weights(context).status is Status.OK
    expected = worker_settings(config.get("upscaler.config"), "cpu", config.upscaler_overrides)
    assert expected.tiling.auto and context.found["upscaler"].settings == expected
    core = WorkerCore(WorkerConfig(0, "cpu", config.get("upscaler.config"), config.upscaler_overrides), threading.Event())
    assert core.upscaler.settings == expected
    usable = int(5.4 * 2**30)
    layout = plan_layout(512, 256, usable, "tiny", expected)
    assert layout.tiled
    monkeypatch.setattr(vram, "usable_bytes", lambda device: usable)
    monkeypatch.setattr(doctor_model, "CPU_WARMUP", (256, 128, 512, 256, 9))
    warm = check_warmup(context)
    assert warm.status is Status.OK and f"9 frames 256x128->512x256 ({layout.tiles} tiles of " in warm.detail, warm.detail


def test_encoder_ok_and_a_rejected_preset(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ok = check_encoder(_context(config))
    assert ok.status is Status.OK and ok.detail.startswith("libx265 (hevc, preset ultrafast) encoded 8 frames")
    config.raw["upscaler"]["preset"] = "warp-speed"  # past validation: what FFmpeg does with a bad option
    failed = check_encoder(_context(config))
    assert failed.status is Status.FAIL and "hevc encoding failed" in failed.detail and "libx265" in failed.fix


# ---------------------------------------------------------------------------------------------- wallet


def _run_fix_commands(fix: str) -> None:
    """Run each `btcli ...` command quoted in a fix (new coldkeys without a password, for the test)."""
    for command in re.findall(r"`(btcli [^`]+)`", fix):
        argv = [str(BTCLI), *shlex.split(command)[1:]] + (["--no-password"] if "new_coldkey" in command else [])
        subprocess.run(argv, check=True, capture_output=True, timeout=60)


def test_wallet_fix_commands_create_what_is_missing(tmp_path: Path) -> None:
    config = _config(tmp_path, wallet="fresh")
    no_wallet = check_wallet(_context(config))
    assert no_wallet.status is Status.FAIL and "no wallet 'fresh'" in no_wallet.detail
    assert "btcli wallet new_coldkey --wallet fresh --wallet-path" in no_wallet.fix
    assert "btcli wallet new_hotkey --wallet fresh --wallet-hotkey default" in no_wallet.fix
    _run_fix_commands(no_wallet.fix.split(" then ")[0])  # the coldkey only: now the hotkey alone is missing
    no_hotkey = check_wallet(_context(config))
    assert no_hotkey.status is Status.FAIL and "hotkey 'default' of wallet 'fresh' missing" in no_hotkey.detail
    assert "new_coldkey" not in no_hotkey.fix
    _run_fix_commands(no_hotkey.fix)
    context = _context(config)
    ok = check_wallet(context)
    assert ok.status is Status.OK and context.found["hotkey"] in ok.detail


def test_wallet_ok_with_a_real_wallet(tmp_path: Path, miner_wallet, wallet_root: Path) -> None:
    context = _context(_config(tmp_path, wallet_root))
    result = check_wallet(context)
    assert result.status is Status.OK and context.found["hotkey"] == miner_wallet.hotkey.ss58_address


# ------------------------------------------------------------------------------------ port and health


class _ServingScheduler:
    """What ``/health`` reads from the scheduler, for a server answering as a serving miner."""

    accepting = True

    @staticmethod
    def health() -> dict[str, Any]:
        return {"backend": "local", "workers": 1, "workers_up": 1, "device": "cpu", "worker_status": []}

    @staticmethod
    def queue_depth() -> int:
        return 0


def test_port_free_then_held_by_another_program(tmp_path: Path) -> None:
    config = _config(tmp_path)
    context = _context(config)
    free = check_port(context)
    assert free.status is Status.OK and "is free (the miner is not running)" in free.detail
    assert check_health(context).status is Status.SKIP
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.get("server.port")))
        holder.listen()
        busy = check_port(context)
    assert busy.status is Status.FAIL and "already in use by another program" in busy.detail
    assert f"pid {os.getpid()}:" in busy.detail and "--port" in busy.fix


def test_port_held_by_the_miner_health_and_local_storage_over_http(tmp_path: Path) -> None:
    config = _config(tmp_path)
    app = FastAPI()
    app.include_router(ops_router(_ServingScheduler(), MinerMetrics(), metrics_enabled=False))  # type: ignore[arg-type]
    storage = LocalStorage(config.get("storage.local.dir"), base_url=config.public_url)
    with _ThreadedServer(serving_files(storage, app, OpsAccess.from_config(config))) as base:
        port = int(base.rsplit(":", 1)[1])
        config = _config(tmp_path, server={"port": port})
        context = _context(config)
        held = check_port(context)
        assert held.status is Status.OK and "held by the running flashvsr-miner" in held.detail
        health = check_health(context)
        assert health.status is Status.OK and "1 worker(s) on cpu" in health.detail
        stored = check_storage(context)
        assert stored.status is Status.OK and f"HTTP 200 from 127.0.0.1:{port}" in stored.detail
    unreachable = check_health(context)
    assert unreachable.status is Status.FAIL and "does not answer" in unreachable.detail
    assert "server.public_url" in unreachable.fix


def test_health_behind_the_ops_gate_is_read_with_the_ops_token(tmp_path: Path, miner_wallet) -> None:
    """/health limited to server.ops sources this host is not among: the doctor sends server.ops.token, and
    without one says how to let it read /health."""
    ops = {"allow": ["10.0.0.0/8"], "token": "t0ken"}
    gated = _config(tmp_path, server={"ops": ops})
    limits, metrics, nobody = ServerLimits.from_config(gated), MinerMetrics(), StaticAllowList([], stake=0.0)
    me = miner_wallet.hotkey.ss58_address
    app = FastAPI()
    app.include_router(ops_router(_ServingScheduler(), metrics, metrics_enabled=False))  # type: ignore[arg-type]
    app.add_middleware(Gate, legacy=LegacyAuth(me, nobody), btauth=BtAuth(me, nobody), limits=limits,
                       ops=OpsAccess.from_config(gated), metrics=metrics, sources=source_guard(limits, metrics))
    with _ThreadedServer(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with_token = check_health(_context(_config(tmp_path, server={"port": port, "ops": ops}), miner_running=True))
        assert with_token.status is Status.OK and "1 worker(s) on cpu" in with_token.detail
        no_token = _config(tmp_path, server={"port": port, "ops": {"allow": ["10.0.0.0/8"]}})
        without = check_health(_context(no_token, miner_running=True))
    assert without.status is Status.FAIL and "answers 404" in without.detail
    assert "server.ops.token" in without.fix and "server.ops.allow" in without.fix


# --------------------------------------------------------------------------------------------- storage


def test_local_storage_round_trip_and_an_unwritable_directory(tmp_path: Path) -> None:
    ok = check_storage(_context(_config(tmp_path)))
    assert ok.status is Status.OK and "signature verified locally" in ok.detail
    assert not [p for p in (tmp_path / "files").rglob("*.bin")], "the test object is deleted"
    (tmp_path / "a-file").write_text("")
    failed = check_storage(_context(_config(tmp_path, storage={"local": {"dir": str(tmp_path / "a-file" / "x")}})))
    assert failed.status is Status.FAIL and "cannot write results under" in failed.detail
    assert "storage.local.dir" in failed.fix


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server checking credentials (after the first three requests: a user, its key, its policy),
    with bucket ``results``; yields its endpoint and the user's key pair. A process of its own: moto's
    credential switch is process-wide."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        common = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **common)
        iam.create_user(UserName="miner")
        key = iam.create_access_key(UserName="miner")["AccessKey"]
        iam.put_user_policy(UserName="miner", PolicyName="results", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                     **common).create_bucket(Bucket=BUCKET)
        yield {"endpoint_url": endpoint, "access_key_id": key["AccessKeyId"],
               "secret_access_key": key["SecretAccessKey"]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _s3_config(tmp: Path, s3: dict[str, str], **changes: str) -> MinerConfig:
    return _config(tmp, storage={"backend": "s3", "s3": {**s3, "bucket": BUCKET, **changes}})


@pytest.fixture()
def open_s3(moto_endpoint: str) -> dict[str, str]:
    """moto's in-process server with bucket ``results``; it checks no credentials (moto's credential
    checks do not cover presigned URLs)."""
    s3 = {"endpoint_url": moto_endpoint, "access_key_id": "testing", "secret_access_key": "testing"}
    boto3.client("s3", region_name="us-east-1", endpoint_url=s3["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    return s3


def test_s3_round_trip_through_the_presigned_url(tmp_path: Path, open_s3: dict[str, str]) -> None:
    result = check_storage(_context(_s3_config(tmp_path, open_s3)))
    assert result.status is Status.OK, result.line()
    assert "fetched through the signed URL (HTTP 200" in result.detail


def test_s3_wrong_secret_and_missing_bucket(tmp_path: Path, s3_server: dict[str, str]) -> None:
    wrong = check_storage(_context(_s3_config(tmp_path, s3_server, secret_access_key="not-the-secret")))
    assert wrong.status is Status.FAIL and "credentials were rejected (SignatureDoesNotMatch)" in wrong.detail
    assert "MINER_STORAGE_S3_SECRET_ACCESS_KEY" in wrong.fix
    missing = check_storage(_context(_s3_config(tmp_path, s3_server, bucket="no-such-results")))
    assert missing.status is Status.FAIL and "does not exist" in missing.detail and "storage.s3.bucket" in missing.fix


# ----------------------------------------------------------------------------------------------- chain


def test_chain_skipped_without_a_chain_and_failing_without_one_reachable(tmp_path: Path) -> None:
    assert check_chain(_context(_config(tmp_path), hotkey="5F")).status is Status.SKIP
    closed = free_port()
    config = _config(tmp_path, chain={"no_chain": False, "network": f"ws://127.0.0.1:{closed}"})
    failed = check_chain(_context(config, hotkey="5F"))
    assert failed.status is Status.FAIL and f"cannot read netuid 85 from ws://127.0.0.1:{closed}" in failed.detail
    assert "reaches the chain" in failed.fix


def test_registration_and_axon_compared_from_a_metagraph_snapshot(tmp_path: Path, miner_wallet) -> None:
    hotkey = miner_wallet.hotkey.ss58_address
    snapshot = tmp_path / "metagraph.json"
    neurons = [{"uid": 7, "hotkey": hotkey, "permit": False, "stake": 0.0, "axon": "203.0.113.7:8091"}]
    snapshot.write_text(json.dumps({"format": 1, "network": "finney", "netuid": 85, "updated_at": time.time(),
                                    "neurons": neurons}))
    view = MetagraphView("finney", 85, snapshot, 600.0, start=False)
    config = _config(tmp_path, chain={"no_chain": False}, server={"public_url": "http://203.0.113.7:8091"})
    ok = registration_result(config, hotkey, view.lookup(hotkey))
    assert ok.status is Status.OK and "uid 7 on netuid 85 on finney, axon 203.0.113.7:8091 matches" in ok.detail
    moved = _config(tmp_path, chain={"no_chain": False}, server={"public_url": "http://198.51.100.2:8091"})
    mismatch = registration_result(moved, hotkey, view.lookup(hotkey))
    assert mismatch.status is Status.FAIL and "publishes 203.0.113.7:8091" in mismatch.detail
    assert "198.51.100.2:8091" in mismatch.detail and "--publish" in mismatch.fix
    unregistered = registration_result(config, "5Gother", view.lookup("5Gother"))
    assert unregistered.status is Status.FAIL and "not registered on netuid 85" in unregistered.detail
    assert "btcli subnets register --netuid 85 --wallet miner" in unregistered.fix
    unpublishable = registration_result(_config(tmp_path, chain={"no_chain": False}), hotkey, view.lookup(hotkey))
    assert unpublishable.status is Status.FAIL and "cannot be published" in unpublishable.detail


# ----------------------------------------------------------------------------------- open files


def test_open_file_limit_verdicts() -> None:
    """The need is max_connections + max_in_flight + 256; a soft limit below it is fine while the hard limit lets
    the miner raise it; a hard limit below it fails with the settings that raise it (and the max_connections
    that fits, where one does)."""
    enough = nofile_result(OpenFileLimit(soft=20000, hard=20000, max_connections=1024, max_in_flight=256))
    assert enough.status is Status.OK and enough.detail.startswith("soft open-file limit 20000 covers the 1536 open "
                                                                   "files the server needs")
    raised = nofile_result(OpenFileLimit(soft=1024, hard=4096, max_connections=1024, max_in_flight=256))
    assert raised.status is Status.OK and raised.detail.endswith("the miner raises it at start (hard limit 4096)")
    low = nofile_result(OpenFileLimit(soft=1024, hard=1024, max_connections=1024, max_in_flight=256))
    assert low.failed and low.detail.startswith("hard open-file limit 1024 (soft 1024) is below the 1536 open files")
    for setting in ("`ulimit -n 1536`", "`LimitNOFILE=1536`", "`pm2 kill`", "lower server.limits.max_connections to 512"):
        assert setting in low.fix, setting
    tiny = nofile_result(OpenFileLimit(soft=256, hard=256, max_connections=1024, max_in_flight=256))
    assert tiny.failed and "max_connections" not in tiny.fix  # nothing above max_in_flight fits in 256
    assert check_nofile(_context(load_miner_config(environ={}))).status is (
        Status.OK if open_file_limit(ServerLimits()).raisable else Status.FAIL)


def _limited(soft: int, hard: int):
    """A ``preexec_fn`` giving the child these open-file limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@cpu_only
@pytest.mark.skipif(HARD_NOFILE != resource.RLIM_INFINITY and HARD_NOFILE < 4096,
                    reason="the test lowers the hard open-file limit to 4096")
def test_a_low_soft_limit_is_raised_at_start_and_a_low_hard_limit_refused(tmp_path: Path, wallet_root: Path,
                                                                          miner_wallet) -> None:
    """With 1024 open files allowed (many hosts' soft limit, the default max_connections), the miner raises its
    soft limit to the 1536 it needs, logs it, and serves; with a hard limit of 1024 it refuses to start, in one
    line naming the settings that raise it."""
    port = free_port()
    path = _toml(tmp_path / "nofile.toml", {
        "server": {"host": "127.0.0.1", "port": port},
        "chain": {"wallet_name": "miner", "wallet_path": str(wallet_root)},
        "storage.local": {"dir": str(tmp_path / "files")}, "jobs.calibration": {"state_path": ""},
        "upscaler": {"weights": "random-small"}})
    command, env = [sys.executable, "-m", "miner", "--config", str(path)], {**os.environ, "PYTHONPATH": str(REPO)}
    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                             preexec_fn=_limited(1024, 1024))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("flashvsr-miner: hard open-file limit 1024 (soft 1024) is below the 1536 open "
                                     "files the server needs (server.limits.max_connections 1024 + max_in_flight "
                                     "256 + 256 of its own); raise it to 1536 or more: `ulimit -n 1536`"), refused.stderr
    log = tmp_path / "miner.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=_limited(1024, 4096))
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", proc, 120)
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
        finally:
            stop(proc)
    assert re.search(r"^Max open files\s+1536\s+4096\s+files", limits, re.M), limits
    assert re.search(r"raised the open-file limit soft_before=1024 soft=1536 hard=4096 needed=1536", log.read_text())


# ------------------------------------------------------------------------------------ start, CLI


def test_start_problem_none_for_a_good_setup(tmp_path: Path, wallet_root: Path, miner_wallet) -> None:
    assert start_problem(_config(tmp_path, wallet_root)) is None


def _toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_starts_exit_2_with_one_line(tmp_path: Path, wallet_root: Path, miner_wallet,
                                         s3_server: dict[str, str]) -> None:
    def config(name: str, **tables: dict[str, Any]) -> Path:
        base = {"server": {"host": "127.0.0.1", "port": free_port()},
                "chain": {"wallet_name": "miner", "wallet_path": str(wallet_root)},
                "storage": {"backend": "local"}, "upscaler": {"weights": "random-small"}}
        for key, table in tables.items():
            base[key] = {**base.get(key, {}), **table}
        return _toml(tmp_path / f"{name}.toml", base)

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    cases = {
        "wallet": (config("wallet", chain={"wallet_path": str(tmp_path / "none")}),
                   "btcli wallet new_coldkey --wallet miner --wallet-path"),
        "storage": (config("storage", storage={"backend": "s3"},
                           **{"storage.s3": {**s3_server, "bucket": BUCKET, "secret_access_key": "wrong"}}),
                    "credentials were rejected (SignatureDoesNotMatch)"),
        "port": (config("port", server={"port": busy}), f"port {busy} is already in use by another program: pid "),
        "value": (config("value", jobs={"max_queue": -3}),
                  "configuration error: jobs.max_queue must be a whole number of at least 1, got -3"),
        "limits": (config("limits", **{"server.limits": {"open_in_flight": 0}}),
                   "configuration error: server.limits.open_in_flight must be a whole number of at least 1, got 0"),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        procs = {name: subprocess.Popen([sys.executable, "-m", "miner", "--config", str(path)], cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, (path, _) in cases.items()}
        results = {name: (proc.wait(timeout=120), *proc.communicate()) for name, proc in procs.items()}
    finally:
        holder.close()
    for name, (status, stdout, stderr) in results.items():
        expected = cases[name][1]
        assert status == 2, (name, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, (name, stderr)
        assert stderr.startswith("flashvsr-miner: ") and expected in stderr, (name, stderr)


@cpu_only
def test_doctor_subcommand_fails_without_a_gpu(tmp_path: Path, wallet_root: Path, miner_wallet) -> None:
    path = _toml(tmp_path / "doctor.toml", {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "chain": {"wallet_name": "miner", "wallet_path": str(wallet_root)},
        "storage.local": {"dir": str(tmp_path / "files")}, "jobs.calibration": {"state_path": ""}})
    done = subprocess.run([sys.executable, "-m", "miner", "doctor", "--config", str(path), "--weights", "random-small"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=180)
    lines = {line.split()[1]: line for line in done.stdout.splitlines()[:-1]}
    assert done.returncode == 1, done.stdout + done.stderr
    assert list(lines) == ["gpu", "versions", "attention", "weights", "warm-up", "encoder", "wallet", "port", "nofile",
                           "health", "storage", "chain"]
    assert lines["gpu"].startswith("FAIL gpu ") and "the miner needs a CUDA GPU" in lines["gpu"]
    nofile = ["nofile"] if open_file_limit(ServerLimits()).raisable else []  # the doctor has this process's limits
    assert [name for name, line in lines.items() if line.startswith("OK")] == [
        "versions", "attention", "weights", "warm-up", "encoder", "wallet", "port", *nofile, "storage"], done.stdout
    assert lines["weights"].startswith("OK   weights   random-small (v1.1, float32) loaded on cpu")
    assert re.search(r"9 frames 64x36->128x72 in [\d.]+ s = [\d.]+ frames/s; table [\d.]+ frames/s, planner "
                     r"estimate [\d.]+ s \(CPU: reported only\)", lines["warm-up"])
    assert done.stdout.splitlines()[-1] == f"{2 - len(nofile)} check(s) failed" and "Traceback" not in done.stderr


@cpu_only
def test_no_worker_starting_ends_the_miner_with_status_2_and_the_reason(tmp_path: Path, wallet_root: Path,
                                                                          miner_wallet) -> None:
    """Every worker failing to start (here a CUDA device on a machine without one) ends the server, and the
    process, with status 2 and the reason on its last line, not a traceback from the server's start-up."""
    path = _toml(tmp_path / "workers.toml", {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "chain": {"wallet_name": "miner", "wallet_path": str(wallet_root)},
        "jobs": {"devices": ["cuda:0"]}, "storage.local": {"dir": str(tmp_path / "files")},
        "upscaler": {"weights": "random-small"}})
    done = subprocess.run([sys.executable, "-m", "miner", "--config", str(path)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("flashvsr-miner: worker 0 on cuda:0 failed to start")
    assert "Application startup failed" not in done.stderr
