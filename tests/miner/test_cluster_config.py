"""``[cluster]`` settings: validation, and ``backend = "ray"`` without Ray installed is one clear
configuration error at start (the real entry point in a subprocess where ``import ray`` fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from miner.config import load_miner_config

REPO = Path(__file__).resolve().parents[2]
HIDE_RAY = ("import runpy, sys; sys.modules['ray'] = None; "  # `import ray` raises ImportError from here on
            "sys.argv = ['flashvsr-miner', *sys.argv[1:]]; runpy.run_module('miner', run_name='__main__')")


def test_ray_backend_without_ray_is_one_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "miner.toml"
    config.write_text('[cluster]\nbackend = "ray"\n')
    proc = subprocess.run([sys.executable, "-c", HIDE_RAY, "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("flashvsr-miner: configuration error: cluster.backend = 'ray' needs Ray")
    assert "pip install -e '.[cluster]'" in line and "cluster.backend = 'local'" in line


def test_the_local_backend_needs_no_ray(tmp_path: Path) -> None:
    """The default configuration loads where Ray cannot be imported."""
    code = ("import sys; sys.modules['ray'] = None; from miner.config import load_miner_config; "
            "c = load_miner_config(environ={}); print(c.get('cluster.backend'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "local", proc.stderr


def test_cluster_settings_are_validated() -> None:
    pytest.importorskip("ray")
    config = load_miner_config(overrides={"cluster": {"backend": "ray", "address": "10.0.0.1:6379",
                                                      "resources": {"h100": 1}}}, environ={})
    assert config.get("cluster.resources") == {"h100": 1}  # the operator's resource names are free keys
    env = load_miner_config(environ={"FLASHVSR_MINER_CLUSTER_BACKEND": "ray", "FLASHVSR_MINER_CLUSTER_NUM_GPUS": "0.5"})
    assert env.get("cluster.backend") == "ray" and env.get("cluster.num_gpus") == 0.5
    for bad, message in (({"backend": "slurm"}, "cluster.backend must be"),
                         ({"resources": {"h100": 0}},
                          "cluster.resources.h100 must be a finite number greater than 0, got 0"),
                         ({"num_gpus": -1.0}, "cluster.num_gpus must be a finite number of at least 0, got -1.0"),
                         ({"result_chunk_bytes": 1024},
                          "cluster.result_chunk_bytes must be a whole number of at least 65536, got 1024"),
                         ({"backend": "ray", "num_gpus": 0.0}, "set one of them, or a number of workers")):
        with pytest.raises(ValueError, match=message):
            load_miner_config(overrides={"cluster": bad}, environ={})
    with pytest.raises(ValueError, match="unknown miner configuration key 'cluster.adress'"):
        load_miner_config(overrides={"cluster": {"adress": "auto"}}, environ={})


def test_auto_workers_count_the_actors_the_cluster_holds() -> None:
    pytest.importorskip("ray")
    from miner.cluster.ray_pool import actor_count

    cluster = load_miner_config(environ={}).section("cluster")  # num_gpus = 1, no extra resources
    assert actor_count(cluster, {"CPU": 64.0, "GPU": 8.0}) == 8
    assert actor_count(cluster, {"CPU": 16.0}) == 0  # a head without GPUs holds none
    pinned = {**cluster, "num_gpus": 1.0, "resources": {"h200": 1}}
    assert actor_count(pinned, {"GPU": 6.0, "h200": 2.0}) == 2  # only the H200 hosts' GPUs
    fake = {**cluster, "num_gpus": 0.0, "resources": {"test_gpu": 1}}
    assert actor_count(fake, {"CPU": 4.0, "test_gpu": 4.0}) == 4
    with pytest.raises(ValueError, match="needs cluster.num_gpus or cluster.resources"):
        actor_count({**cluster, "num_gpus": 0.0}, {"CPU": 4.0})


def test_an_actor_takes_every_download_the_miner_lets_run_at_once() -> None:
    """The actor's inputs group follows ``jobs.download_concurrency`` (all of a round's downloads may land
    on one actor), with room for transfers beside them."""
    pytest.importorskip("ray")
    from miner.cluster.actor import CONTROL, INPUTS
    from miner.cluster.ray_pool import CONTROL_CALLS, INPUT_TRANSFERS, remote_actor

    for downloads in (1, 8, 24):
        groups = remote_actor(downloads).__ray_metadata__.concurrency_groups
        assert groups[INPUTS] == downloads + INPUT_TRANSFERS and groups[CONTROL] == CONTROL_CALLS


def test_a_result_transfer_that_stalls_is_given_up_per_chunk() -> None:
    """Result chunks are written as they come; a chunk that does not come within the per-chunk timeout ends
    the transfer (the clip is then lost on that worker, and retried where the deadline allows)."""
    pytest.importorskip("ray")
    import asyncio
    import io

    from miner.cluster.ray_pool import TransferStalled, write_chunks

    async def ready(data: bytes) -> bytes:
        return data

    async def chunks(stall_after: int | None):
        for number, data in enumerate((b"ab", b"cd", b"ef")):
            if number == stall_after:
                await asyncio.Event().wait()  # the actor's host stopped answering
            yield ready(data)

    out = io.BytesIO()
    assert asyncio.run(write_chunks(chunks(None), out, 1.0)) == 6 and out.getvalue() == b"abcdef"
    out = io.BytesIO()
    with pytest.raises(TransferStalled, match="no chunk after 4 bytes for 0.2s"):
        asyncio.run(write_chunks(chunks(2), out, 0.2))
    assert out.getvalue() == b"abcd"
