"""The same clip through each worker pool: the local process pool and the Ray backend, one after the other
on the same GPU, in one process; frames/s of each and their ratio.

    python scripts/bench_pool.py --task SD24K --frames 300 --weights random --json runs/bench_pool.json

The clip is a ``flashvsr-bench``-style generated clip at the task's input size, served on 127.0.0.1 so a
Ray actor downloads it as it downloads a validator's (the local pool reads the file). Each backend starts
one worker with the miner's settings (configs/miner.toml: compile, FP8 K/V cache, HEVC ultrafast), warms
it up on the task's shape, then runs the clip ``--repeat`` times through ``Scheduler.run``. Ray runs a local
instance (``ray.init``) with the machine's GPUs; its actor reserves one. ``fps`` is the upscale's own
frames/s (decode to encoded MP4, the worker's report); ``wall_fps`` adds what the pool costs around it (the
actor's download, the result streamed back in chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from miner.config import MinerConfig, load_miner_config
from miner.jobs.scheduler import Scheduler
from miner.jobs.spec import TaskSpec
from miner.log import setup_logging
from miner.metrics import MinerMetrics
from upscaler.video.synthetic import write_test_clip

log = logging.getLogger("bench_pool")


class ClipServer:
    """A directory served over HTTP on 127.0.0.1 (a thread; stops on exit)."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> "ClipServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def pool_config(backend: str, args: argparse.Namespace, work: Path) -> MinerConfig:
    """One worker of ``backend`` with the miner's settings, warmed on the task's shape, no calibration."""
    tasks = {args.task: {"width": args.out_size[0], "height": args.out_size[1], "scale": 2}} if args.out_size else {}
    return load_miner_config(overrides={
        "tasks": tasks,
        "jobs": {"workers": 1, "warmup_tasks": [args.task], "work_dir": str(work), "progress_log_s": 0.0,
                 "calibration": {"enabled": False}},
        "cluster": {"backend": backend, "work_dir": str(work / "actor")},
        "fetch": {"allow_private_urls": True},
        "upscaler": {"weights": args.weights},
        "log": {"level": args.log_level},
    }, environ={})


async def run_backend(backend: str, args: argparse.Namespace, clip: Path, url: str, work: Path) -> dict[str, Any]:
    """Start one worker of ``backend``, run the clip ``args.repeat`` times, stop it; the figures."""
    config = pool_config(backend, args, work)
    geometry = config.tasks[args.task]
    scheduler = Scheduler(config, MinerMetrics())
    began = time.perf_counter()
    await scheduler.start()
    started_s = time.perf_counter() - began
    runs = []
    try:
        for i in range(args.repeat):
            spec = TaskSpec(task_id=f"{backend}-{i}", task_type=args.task, src=str(clip), src_url=url,
                            dst=str(work / f"{backend}-{i}.mp4"), width=geometry.width, height=geometry.height,
                            frames=args.frames, variant="tiny", tile_size=0, max_bytes=1 << 40,
                            deadline=time.time() + 3600, crf=int(config.get("upscaler.crf")),
                            codec=str(config.get("upscaler.codec")), preset=str(config.get("upscaler.preset")))
            t0 = time.perf_counter()
            outcome = await scheduler.run(spec, priority=1.0)
            wall = time.perf_counter() - t0
            if not outcome.ok:
                raise RuntimeError(f"{backend} run {i} failed: {outcome.error_kind}: {outcome.message}")
            runs.append({"fps": outcome.report["frames_per_second"], "wall_fps": args.frames / wall,
                         "wall_s": wall, "seconds": outcome.seconds, "out_bytes": Path(spec.dst).stat().st_size})
            log.warning("%s run %d: %.3f fps (wall %.3f fps)", backend, i, runs[-1]["fps"], runs[-1]["wall_fps"])
        worker = scheduler.health()["worker_status"][0]
    finally:
        await scheduler.stop(grace_s=5.0)
    return {"backend": backend, "start_s": started_s, "worker": worker, "runs": runs,
            "fps": max(r["fps"] for r in runs), "wall_fps": max(r["wall_fps"] for r in runs)}


async def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    config = pool_config("local", args, root)
    geometry = config.tasks[args.task]
    clip = write_test_clip(root / "clip.mp4", geometry.width // geometry.scale, geometry.height // geometry.scale,
                           args.frames)
    results = []
    with ClipServer(root) as server:
        for backend in args.backends:
            if backend == "ray":
                import ray

                # without a GPU (a CPU smoke run) one is declared so that the actor's num_gpus=1 is placed
                ray.init(num_gpus=max(torch.cuda.device_count(), 1), include_dashboard=False, log_to_driver=True,
                         configure_logging=False)
            results.append(await run_backend(backend, args, clip, server.url(clip.name), root))
    by = {r["backend"]: r for r in results}
    summary: dict[str, Any] = {"task": args.task, "frames": args.frames, "weights": args.weights,
                               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                               "results": results}
    if {"local", "ray"} <= by.keys():
        summary["ray_vs_local_fps"] = by["ray"]["fps"] / by["local"]["fps"]
        summary["ray_vs_local_wall_fps"] = by["ray"]["wall_fps"] / by["local"]["wall_fps"]
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_pool", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="SD24K", help="Vidaio task: the clip's input and output size")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--weights", default="random", help="random (real shapes), random-small, auto, a model dir")
    p.add_argument("--repeat", type=int, default=2, help="runs per backend (the best is compared)")
    p.add_argument("--backends", default="local,ray", type=lambda s: [b for b in s.split(",") if b])
    p.add_argument("--out-size", type=lambda s: tuple(int(v) for v in s.split("x")),
                   help="WxH output instead of the task's (input: half of it), e.g. 128x72 for a CPU smoke run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    setup_logging(args.log_level, "kv")
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        summary = asyncio.run(bench(args, Path(tmp)))
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    for r in summary["results"]:
        print(f"{r['backend']:>5}: {r['fps']:.3f} fps (wall {r['wall_fps']:.3f}), started in {r['start_s']:.1f} s")
    if "ray_vs_local_fps" in summary:
        print(f"ray / local: {summary['ray_vs_local_fps']:.4f} (fps), {summary['ray_vs_local_wall_fps']:.4f} (wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
