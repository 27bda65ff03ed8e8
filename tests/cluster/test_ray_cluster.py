"""The Ray backend for real: a Ray cluster of two node processes on loopback (each declaring two fake GPUs,
``test_gpu``), the miner as a subprocess driving four actors (CPU, random-small weights), mock-validator
rounds over legacy synapses, the second node killed mid-round, then a node joining again; a GPU host
joining a running miner and leaving it while idle; each clip downloaded once, by an actor, and pulled from
there by the actor that runs it."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import boto3
import pytest

from miner.config import load_miner_config
from miner.jobs.inputs import INPUT_NAME, InputFailed
from miner.jobs.spec import TaskSpec
from miner.metrics import MinerMetrics
from miner.mock_validator import wallets
from miner.mock_validator.report import Report
from miner.mock_validator.runner import RunOptions, make_client, run_validators
from miner.mock_validator.serve import InputServer
from miner.mock_validator.settings import load_settings
from scripts.run_local import MINER_WALLET, free_port, stop, wait_healthy
from upscaler.video.synthetic import write_test_clip

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
NODE = {"num_cpus": 2, "resources": {"test_gpu": 2}, "object_store_memory": 100 * MIB}
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
# The LengthCheck task of this test: 300 frames at 240x136 on the CPU row take 50.4 s (x1.15 + 1.5 s), so
# five of them fit 135 s on 3 or 4 workers (two each at most: 100.8 s) and not on 2 (three: 151 s).
LENGTH_TASK = {"width": 240, "height": 136, "scale": 2}


def _head(monkeypatch: pytest.MonkeyPatch, **node: Any) -> Cluster:
    """A head node on 127.0.0.1 whose actors import this checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    return Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False,
                                                         "_system_config": FAST_NODE_DEATH})


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, Any]]:
    """A head node and a second node (separate raylets on 127.0.0.1)."""
    cluster = _head(monkeypatch, **NODE)
    try:
        yield cluster, cluster.add_node(**NODE)
    finally:
        cluster.shutdown()


@pytest.fixture
def head_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A head node alone, with two fake GPUs (GPU hosts join during the test)."""
    cluster = _head(monkeypatch, **NODE)
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def one_gpu_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A head node alone, with one fake GPU."""
    cluster = _head(monkeypatch, **{**NODE, "resources": {"test_gpu": 1}})
    try:
        yield cluster
    finally:
        cluster.shutdown()


def miner_toml(root: Path, port: int, address: str, allow_list: list[str]) -> Path:
    """The miner on loopback, no chain, local storage, ``backend = "ray"`` with one fake GPU per actor."""
    path = root / "miner.toml"
    path.write_text("\n".join([
        "[server]", 'host = "127.0.0.1"', f"port = {port}", "shutdown_grace_s = 5.0",
        "[chain]", "no_chain = true", f"allow_list = {json.dumps(allow_list)}",
        f'wallet_name = "{MINER_WALLET}"', f"wallet_path = {json.dumps(str(root / 'wallets'))}",
        "[jobs]", f"work_dir = {json.dumps(str(root / 'miner-work'))}", 'length_check_task = "LC"',
        "worker_start_timeout_s = 180.0", "progress_log_s = 0.0", "worker_check_s = 1.0",
        "[jobs.calibration]", 'state_path = ""',
        "[jobs.test_hooks]", "delay_s = 1.5",  # each clip runs long enough to be caught mid-round
        "[cluster]", 'backend = "ray"', f"address = {json.dumps(address)}", "num_gpus = 0.0", "num_cpus = 0.0",
        "resources = { test_gpu = 1.0 }", f"work_dir = {json.dumps(str(root / 'actors'))}",
        "result_chunk_bytes = 65536",  # several chunks per result even for these small clips
        "[fetch]", "allow_private_urls = true",
        "[storage]", 'backend = "local"', "[storage.local]", f"dir = {json.dumps(str(root / 'files'))}",
        "[upscaler]", 'weights = "random-small"',
        "[log]", 'format = "json"',
        "[tasks]", f"LC = {{ width = {LENGTH_TASK['width']}, height = {LENGTH_TASK['height']}, scale = 2 }}", ""]))
    return path


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        return json.loads(resp.read())


async def length_check(opts: RunOptions, wallet: Any) -> int | None:
    async with aiohttp.ClientSession() as session:
        value, answer = await make_client("legacy", session, opts.miner_url, wallet, opts.miner_hotkey).length(10.0)
        assert answer.status == 200, answer.message
        return value


def clips_of(report: Report) -> list[Any]:
    (validator,) = report.validators
    (rnd,) = validator.rounds
    assert rnd.met_deadline, f"round not answered inside its deadline: {rnd.status} {rnd.message}"
    return rnd.clips


def run_miner(tmp_path: Path, address: str, scenario: Any, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Start the miner (subprocess) on ``address``'s cluster, run ``scenario(url, opts, settings, validator)``
    against it, stop it; the miner's JSON log lines."""
    (validator,) = wallets.validator_wallets(tmp_path / "wallets", 1)
    miner_hotkey = wallets.load_or_create(tmp_path / "wallets", MINER_WALLET).hotkey.ss58_address
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = miner_toml(tmp_path, port, address, [validator.hotkey.ss58_address])
    settings = load_settings(overrides={"round": {"use_length_check": False}})
    opts = RunOptions(miner_url=url, miner_hotkey=miner_hotkey, task="SD2HD", clips=4, seconds=0.5, small=True,
                      organic=False, transport="legacy", baseline=False, quality_gate=False, workers=2)
    log_path = tmp_path / "miner.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "miner", "--config", str(config)], cwd=REPO,
                                stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            wait_healthy(f"{url}/health", proc, 240)
            asyncio.run(scenario(url, opts, settings, validator))
        except BaseException:
            print(log_path.read_text(errors="replace")[-12000:])
            raise
        finally:
            stop(proc, grace=30)
    lines = [json.loads(line) for line in log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert "miner stopped" in [e.get("msg") for e in lines]
    return lines


def test_round_over_four_actors_on_two_nodes_survives_losing_a_node_and_regains_it(tmp_path: Path, ray_cluster) -> None:
    cluster, second = ray_cluster
    lines = run_miner(tmp_path, cluster.address, functools.partial(
        _scenario, tmp_path=tmp_path, cluster=cluster, second=second))
    assert "worker lost" in [e.get("msg") for e in lines]


def test_actor_uploads_to_s3_itself(tmp_path: Path, one_gpu_cluster: Cluster, moto_endpoint: str) -> None:
    """With S3 storage the actor uploads the result from its own host: the URL is the bucket's, and nothing
    comes back to the public host's storage."""
    s3 = {"MINER_STORAGE_S3_BUCKET_NAME": "results", "MINER_STORAGE_S3_ENDPOINT_URL": moto_endpoint,
          "MINER_STORAGE_S3_ACCESS_KEY_ID": "testing", "MINER_STORAGE_S3_SECRET_ACCESS_KEY": "testing",
          "FLASHVSR_MINER_STORAGE_BACKEND": "s3"}
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="results")

    async def scenario(url: str, opts: RunOptions, settings: dict, validator: Any) -> None:
        assert health(url)["workers_up"] == 1
        report = await run_validators([validator], replace(opts, clips=2), settings, tmp_path / "round", "ray, s3")
        for clip in clips_of(report):
            assert clip.passed, (clip.error, clip.score)
            assert clip.result_url.startswith(f"{moto_endpoint}/results/") and "X-Amz-Signature" in clip.result_url
            assert clip.input_downloads == 1, "downloaded once, by the actor"

    lines = run_miner(tmp_path, one_gpu_cluster.address, scenario, env=s3)
    tasks = [e for e in lines if e.get("msg") == "task"]
    # the one actor downloaded each clip for admission (download_s) and ran it from that copy
    assert len(tasks) == 2 and all(t["result"] == "ok" and "upload_s" in t and "download_s" in t for t in tasks)
    assert not any("remote_download_s" in t or "input_pull_s" in t for t in tasks)
    assert not (tmp_path / "files").exists() or not any(p.is_file() and p.suffix == ".mp4"
                                                        for p in (tmp_path / "files").rglob("*"))
    assert not any((tmp_path / "actors").rglob("*.mp4")), "the actor leaves no files behind"


async def _scenario(url: str, opts: RunOptions, settings: dict, validator: Any, *, tmp_path: Path, cluster: Cluster,
                    second: Any) -> None:
    state = health(url)
    assert state["backend"] == "ray" and state["workers"] == state["workers_up"] == 4, state
    nodes = {w["node_id"] for w in state["worker_status"]}
    assert len(nodes) == 2, f"four actors on two nodes: {state['worker_status']}"
    assert await length_check(opts, validator) == 10  # five LC clips fit 135 s on four workers

    # A round spread over the four actors: every clip passes its hard checks, served from local storage.
    report = await run_validators([validator], opts, settings, tmp_path / "round1", "ray backend")
    for clip in clips_of(report):
        assert clip.passed, (clip.error, clip.score)
        assert all(c.ok for c in clip.score.checks if c.enforced)
        assert clip.result_url.startswith(f"{url}/files/")
        assert clip.input_downloads == 1, "downloaded once, by an actor; another actor pulls it from there"
    state = health(url)
    assert all(w["clips_done"] == 1 and w["clips_failed"] == 0 for w in state["worker_status"]), state
    assert all(w["calibrated_fps"] > 0 and w["gpu"] == "cpu" for w in state["worker_status"])

    # Round two; the second node dies while its actors are running clips.
    on_second = {w["index"] for w in state["worker_status"] if w["node_id"] == second.node_id}
    assert len(on_second) == 2
    running = asyncio.create_task(run_validators([validator], replace(opts, seed=7), settings, tmp_path / "round2",
                                                 "ray backend, node lost"))
    began = time.monotonic()
    while not any(w["running"] and w["index"] in on_second for w in health(url)["worker_status"]):
        assert time.monotonic() - began < 120 and not running.done(), "no clip ever ran on the second node"
        await asyncio.sleep(0.1)
    await asyncio.to_thread(cluster.remove_node, second, False)
    report = await running
    for clip in clips_of(report):  # every clip finished on the head's actors, or failed with a reason
        assert clip.passed or clip.error.split(":")[0] in {"worker_crash", "deadline", "refused"}, clip.error
    assert sum(c.passed for c in clips_of(report)) >= 2

    # The miner keeps serving on the two actors left; the LengthCheck follows.
    state = health(url)
    assert state["workers_up"] == 2, state
    lost = [w for w in state["worker_status"] if w["index"] in on_second]
    assert all(w["state"] in ("restarting", "down") for w in lost), lost
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    for index in range(4):
        assert f'miner_worker_up{{worker="{index}"}} {0.0 if index in on_second else 1.0}' in metrics
        assert f'miner_worker_calibrated_fps{{worker="{index}"}}' in metrics
    assert metrics.count("miner_worker_info{") == 4
    assert await length_check(opts, validator) == 5
    report = await run_validators([validator], replace(opts, clips=2, seed=9), settings, tmp_path / "round3",
                                  "ray backend, one node")
    assert all(clip.passed for clip in clips_of(report))

    # A GPU host joins again: Ray places the two restarting actors on it, the LengthCheck rises again.
    cluster.add_node(**NODE)  # in the main thread: a node registers signal handlers
    began = time.monotonic()
    while health(url)["workers_up"] < 4:
        assert time.monotonic() - began < 120, health(url)
        await asyncio.sleep(0.5)
    assert await length_check(opts, validator) == 10


def test_actors_follow_gpu_hosts_joining_and_leaving_a_running_miner(tmp_path: Path, head_only: Cluster) -> None:
    """A GPU host joining gets actors (jobs.workers = "auto"), and the LengthCheck rises; when it leaves
    while its actors are idle, they stop counting at the next check, without a clip failing on them."""

    async def scenario(url: str, opts: RunOptions, settings: dict, validator: Any) -> None:
        state = health(url)
        assert state["workers"] == state["workers_up"] == 2, state
        assert await length_check(opts, validator) == 5  # five LC clips do not fit 135 s on two workers

        joined = head_only.add_node(**NODE)  # in the main thread: a node registers signal handlers
        began = time.monotonic()
        while (state := health(url))["workers_up"] < 4:
            assert time.monotonic() - began < 120, state
            await asyncio.sleep(0.5)
        assert state["workers"] == 4 and {w["node_id"] for w in state["worker_status"]} == {
            head_only.head_node.node_id, joined.node_id}, state
        assert await length_check(opts, validator) == 10
        report = await run_validators([validator], opts, settings, tmp_path / "round", "ray backend, grown")
        for clip in clips_of(report):
            assert clip.passed, (clip.error, clip.score)
            assert clip.input_downloads == 1

        await asyncio.to_thread(head_only.remove_node, joined, False)
        began = time.monotonic()
        while (state := health(url))["workers_up"] > 2:
            assert time.monotonic() - began < 30, state
            await asyncio.sleep(0.2)
        lost = [w for w in state["worker_status"] if w["node_id"] == joined.node_id]
        assert len(lost) == 2 and all(w["state"] in ("restarting", "down") for w in lost), lost
        assert all(w["clips_failed"] == 0 for w in state["worker_status"]), state
        assert await length_check(opts, validator) == 5

    lines = run_miner(tmp_path, head_only.address, scenario)
    messages = [e.get("msg") for e in lines]
    assert messages.count("worker added") == 2 and messages.count("worker lost while idle") == 2


def test_the_actor_running_a_clip_pulls_it_from_the_actor_that_downloaded_it(tmp_path: Path, head_only: Cluster) -> None:
    """Two actors driven from this process: one downloads and probes a clip for admission, the other runs it
    from that copy (one download); a failed download is the clip's own error, as on the miner's host; when
    the holder was killed and restarted by Ray meanwhile (its copy gone), the runner downloads the clip again."""
    from miner.cluster.ray_pool import RayPool
    from miner.jobs.scheduler import Scheduler

    config = load_miner_config(overrides={
        "jobs": {"workers": 2},
        "cluster": {"backend": "ray", "address": head_only.address, "num_gpus": 0.0, "num_cpus": 0.0,
                    "resources": {"test_gpu": 1.0}, "work_dir": str(tmp_path / "actors")},
        "fetch": {"allow_private_urls": True},
        "upscaler": {"weights": "random-small"},
    }, environ={})
    (tmp_path / "inputs").mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_test_clip(tmp_path / "inputs" / name, 64, 36, 9)

    def spec(task_id: str, url: str) -> TaskSpec:
        return TaskSpec(task_id=task_id, task_type="SD2HD", src=str(tmp_path / task_id / INPUT_NAME),
                        dst=str(tmp_path / f"{task_id}.mp4"), width=128, height=72, frames=9, variant="tiny",
                        tile_size=0, max_bytes=50 * MIB, deadline=time.time() + 120, crf=23, src_url=url,
                        staged_on=0)

    async def go(server: InputServer) -> None:
        pool = RayPool(config, Scheduler(config, MinerMetrics()).worker_config, 180.0)
        holder, runner = await pool.new_workers()
        await asyncio.gather(holder.start(), runner.start())
        try:
            info = await holder.stage("t1", server.url("a.mp4"), INPUT_NAME)
            assert (info.width, info.height, info.frames) == (64, 36, 9)
            outcome = await runner.execute(spec("t1", server.url("a.mp4")))
            assert outcome.ok and "input_pull" in outcome.seconds and "remote_download" not in outcome.seconds, outcome
            assert server.downloads["a.mp4"] == 1 and (tmp_path / "t1.mp4").stat().st_size > 0

            with pytest.raises(InputFailed) as failed:
                await holder.stage("t2", server.url("missing.mp4"), INPUT_NAME)
            assert failed.value.kind == "download_bad_status", failed.value

            await holder.stage("t3", server.url("b.mp4"), INPUT_NAME)
            ray.kill(ray.get_actor(f"flashvsr-worker-0-{os.getpid()}", namespace=config.get("cluster.namespace")),
                     no_restart=False)
            outcome = await runner.execute(spec("t3", server.url("b.mp4")))
            assert outcome.ok and "remote_download" in outcome.seconds, outcome
            assert server.downloads["b.mp4"] == 2
        finally:
            await asyncio.gather(holder.stop(), runner.stop())

    try:
        with InputServer(tmp_path / "inputs") as server:
            asyncio.run(go(server))
    finally:
        ray.shutdown()
