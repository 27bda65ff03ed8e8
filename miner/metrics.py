"""Prometheus metrics of one miner process (served at ``GET /metrics``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 135, 300, 600)
FPS_BUCKETS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class MinerMetrics:
    """Counters, histograms and gauges; each instance owns its registry (one per app)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "miner_requests", "Requests answered, by route and HTTP status", ["route", "status"], registry=r,
        )
        self.tasks = Counter(
            "miner_tasks", "Clips processed, by task type and result", ["task_type", "result"], registry=r,
        )
        self.stage_seconds = Histogram(
            "miner_stage_seconds", "Seconds per clip and stage", ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.frames_per_second = Histogram(
            "miner_frames_per_second", "Upscale throughput per clip (frames/s)", ["variant"],
            buckets=FPS_BUCKETS, registry=r,
        )
        self.frames = Counter("miner_frames", "Output frames produced", registry=r)
        self.queue_depth = Gauge("miner_queue_depth", "Clips waiting for a worker", registry=r)
        self.running = Gauge("miner_running_tasks", "Clips running on a worker", registry=r)
        self.workers_ready = Gauge("miner_workers_ready", "Worker processes with a loaded model", registry=r)
        self.throughput_factor = Gauge(
            "miner_throughput_factor", "Measured / table frames/s the planner applies to the worker, from its device "
            "class's calibration, per variant (tiny+tiled: tiled runs) and output size (1 = as in the table)",
            ["worker", "device_class", "variant", "size"], registry=r,
        )
        self.worker_restarts = Counter("miner_worker_restarts", "Worker processes restarted after a crash", registry=r)
        self.refusals = Counter("miner_refusals", "Work refused before it started, by reason", ["reason"], registry=r)
        self.refused = Counter(
            "miner_refused_requests", "Requests refused by the server's gate before any work, by reason",
            ["reason"], registry=r,
        )
        self.blocked_sources = Counter(
            "miner_blocked_sources", "Source addresses blocked for too many refused requests", registry=r,
        )
        self.connections_closed = Counter(
            "miner_connections_closed", "Connections closed by the server's guards, by reason", ["reason"], registry=r,
        )
        self.worker_info = Gauge(
            "miner_worker_info", "One per worker: the node it runs on, its GPU and the planner's device class",
            ["worker", "node", "gpu", "device_class"], registry=r,
        )
        self.worker_up = Gauge("miner_worker_up", "1 while the worker is up (idle or busy), 0 while lost or restarting",
                               ["worker"], registry=r)
        self.worker_fps = Gauge(
            "miner_worker_calibrated_fps", "The worker's calibrated frames/s at the LengthCheck task's size (Tiny)",
            ["worker"], registry=r,
        )
        self.worker_clips = Counter("miner_worker_clips", "Clips finished per worker, by result (ok, failed)",
                                    ["worker", "result"], registry=r)

    def forget_worker(self, worker: str, info: dict[str, Any]) -> None:
        """Drop a worker's old info series (it came back on another node or GPU)."""
        try:
            self.worker_info.remove(worker, info.get("node", ""), info.get("gpu", ""), info.get("device_class", ""))
        except KeyError:
            pass

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
