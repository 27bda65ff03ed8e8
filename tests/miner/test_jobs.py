"""The job system for real: the priority queue, admission arithmetic, and the scheduler driving a
spawned worker process that runs the real upscaler (random-small weights, CPU) on real clips."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from miner.config import load_miner_config
from miner.jobs.admission import Backlog, admit, predict_finishes
from miner.jobs.queue import PriorityTaskQueue, QueueFull
from miner.jobs.spec import ErrorKind, TaskOutcome, TaskSpec
from miner.jobs.worker import WorkerConfig, WorkerCore, WorkerHooks
from miner.metrics import MinerMetrics
from upscaler.planner import ClipWork, Measurement, ThroughputTable, WorkerCapacity

SRC_W, SRC_H, FRAMES = 64, 36, 9
OUT_W, OUT_H = 128, 72


def make_clip(path: Path, width: int = SRC_W, height: int = SRC_H, frames: int = FRAMES) -> Path:
    """A short H.264 clip of moving gradients (30 fps, yuv420p, like Vidaio's inputs)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ys, xs = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xs * 4 + i * 8) % 256, (ys * 6) % 256, (xs + ys + i * 16) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_shape(path: Path) -> tuple[int, int, int]:
    """(width, height, decoded frames)."""
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
        return frames[0].width, frames[0].height, len(frames)


def test_queue_orders_by_stake_then_fifo() -> None:
    async def go() -> list[str]:
        queue: PriorityTaskQueue[str] = PriorityTaskQueue(maxsize=10)
        for item, stake in (("a", 1.0), ("b", 5.0), ("c", 1.0), ("d", 5.0)):
            await queue.put(item, stake)
        return [await queue.get() for _ in range(4)]

    assert asyncio.run(go()) == ["b", "d", "a", "c"]


def test_full_queue_displaces_lower_stake_or_refuses() -> None:
    async def go() -> None:
        queue: PriorityTaskQueue[str] = PriorityTaskQueue(maxsize=2)
        await queue.put("low", 1.0)
        await queue.put("mid", 2.0)
        with pytest.raises(QueueFull):
            await queue.put("same-as-low", 1.0)
        assert await queue.put("high", 3.0) == "low"
        assert queue.items() == ["high", "mid"]
        assert queue.remove("mid") and queue.items() == ["high"]

    asyncio.run(go())


def test_a_clip_put_back_goes_first_among_its_equals() -> None:
    async def go() -> list[str]:
        queue: PriorityTaskQueue[str] = PriorityTaskQueue(maxsize=2)
        for item in ("a", "b"):
            await queue.put(item, 1.0)
        taken = await queue.get()
        await queue.put("c", 1.0)
        await queue.requeue(taken, 1.0)  # over maxsize: it was admitted already
        return [await queue.get() for _ in range(3)]

    assert asyncio.run(go()) == ["a", "b", "c"]


def test_admission_predicts_from_backlog() -> None:
    """1 frame = 1 s on the row below: a worker 4 s from free, an idle one, 6 s queued ahead."""
    table = ThroughputTable((Measurement("h100", "tiny", 10, 10, 1.0, 0.0),), unknown_gpu_factor=0.5,
                            safety_margin=1.0, clip_overhead_s=0.0)
    workers = (WorkerCapacity("h100", table, busy_for=4.0), WorkerCapacity("h100", table))
    backlog = Backlog(workers, queued=(ClipWork(10, 10, 6),))
    two = ClipWork(10, 10, 2)
    assert predict_finishes(backlog, [two, two]) == [(6.0, 2.0), (8.0, 2.0)]
    decisions = admit(backlog, [two, two, ClipWork(10, 10, 30)], seconds_left=9.0)
    assert decisions[:2] == [None, None]
    assert "exceeds the 9.0s left" in decisions[2]
    # A worker of the unmeasured class runs at half the speed: the same clip takes it twice as long.
    assert predict_finishes(Backlog((WorkerCapacity("gpu-x", table),), ()), [two]) == [(4.0, 4.0)]
    assert admit(Backlog((), ()), [two], seconds_left=100.0) == ["no worker is up (all lost or restarting)"]


def _config(tmp_path: Path, **jobs: object):
    return load_miner_config(overrides={
        "upscaler": {"weights": "random-small"},
        "jobs": {"devices": ["cpu"], "workers": 1, "oom_retry_tile_size": 128, "work_dir": str(tmp_path),
                 "test_hooks": {"oom_if_src_contains": "oom", "crash_if_src_contains": "crash-clip"},
                 "calibration": {"min_frames": 1, "state_path": str(tmp_path / "calibration.json")}, **jobs},
        "tasks": {"SD2HD": {"width": OUT_W, "height": OUT_H, "scale": 2}},
    }, environ={})


def _spec(tmp_path: Path, name: str, deadline_s: float = 120.0, frames: int = FRAMES) -> TaskSpec:
    src = make_clip(tmp_path / f"{name}.mp4", frames=frames)
    return TaskSpec(task_id=name, task_type="SD2HD", src=str(src), dst=str(tmp_path / f"{name}.out.mp4"),
                    width=OUT_W, height=OUT_H, frames=frames, variant="tiny", tile_size=0,
                    max_bytes=50 * 1024 * 1024, deadline=time.time() + deadline_s, crf=23, est_seconds=5.0)


def test_a_worker_that_stays_down_is_logged_while_the_backoff_grows_then_every_ten_minutes() -> None:
    from miner.jobs.scheduler import DOWN_LOG_EVERY_S, RECOVERY_BACKOFF_S, down_log_due

    logged, since, error = [], 0.0, "CUDA error: no CUDA-capable device is detected"
    for attempt in range(200):  # ~100 minutes of failures at the longest backoff
        if down_log_due(attempt, error, error if logged else "", since):
            logged.append(attempt)
            since = 0.0
        since += RECOVERY_BACKOFF_S[min(attempt, len(RECOVERY_BACKOFF_S) - 1)]
    assert logged[:len(RECOVERY_BACKOFF_S)] == list(range(len(RECOVERY_BACKOFF_S)))
    spacing = {b - a for a, b in zip(logged[len(RECOVERY_BACKOFF_S):], logged[len(RECOVERY_BACKOFF_S) + 1:])}
    assert spacing == {int(DOWN_LOG_EVERY_S // RECOVERY_BACKOFF_S[-1])}  # one line per 10 minutes, not per 30 s
    assert down_log_due(150, "another error", error, 30.0)  # a new error is logged at once


@pytest.mark.slow
def test_scheduler_with_real_worker(tmp_path: Path) -> None:
    from miner.jobs.scheduler import Scheduler

    metrics = MinerMetrics()

    async def go() -> None:
        scheduler = Scheduler(_config(tmp_path), metrics)
        await scheduler.start()
        try:
            ok = await scheduler.run(_spec(tmp_path, "plain"), priority=1.0)
            assert ok.ok, ok.message
            assert video_shape(Path(tmp_path / "plain.out.mp4")) == (OUT_W, OUT_H, FRAMES)
            assert ok.report["frames"] == FRAMES and ok.attempts == 1
            # The measured speed of that clip now scales the planner's estimates (bounded factor).
            table = scheduler.table
            factor = table.calibration.factor("tiny", OUT_W, OUT_H)
            raw_fps = table.frames_per_second("cpu", "tiny", OUT_W, OUT_H, calibrated=False)
            assert factor == min(max(ok.report["frames_per_second"] / raw_fps, 0.25), 2.0)
            assert metrics.throughput_factor.labels("0", "cpu", "tiny", f"{OUT_W}x{OUT_H}")._value.get() == factor

            # A real torch.OutOfMemoryError on the first attempt: freed, retried once, succeeds. The CPU has no
            # GPU memory to fit a layout to, so the retry plans as a first attempt does (untiled); the layout
            # of a retry on a GPU: test_out_of_memory_retry_runs_the_layout_that_fits_the_memory_free_then.
            oom = await scheduler.run(_spec(tmp_path, "oom-clip"), priority=1.0)
            assert oom.ok, oom.message
            assert oom.attempts == 2 and oom.report["tiled"] is False
            assert video_shape(Path(tmp_path / "oom-clip.out.mp4")) == (OUT_W, OUT_H, FRAMES)

            # The worker process dies mid-task: only that task fails; the worker is restarted.
            crash = await scheduler.run(_spec(tmp_path, "crash-clip"), priority=1.0)
            assert not crash.ok and crash.error_kind == ErrorKind.CRASH
            after = await scheduler.run(_spec(tmp_path, "after"), priority=1.0)
            assert after.ok, after.message
            assert metrics.worker_restarts._value.get() == 1

            # Corrupt input: a clear input error, the worker keeps serving.
            corrupt = tmp_path / "corrupt.mp4"
            corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
            bad = await scheduler.run(TaskSpec(**{**_spec(tmp_path, "x").__dict__, "src": str(corrupt)}), 1.0)
            assert not bad.ok and bad.error_kind == ErrorKind.INPUT

            # Admission: an estimate that cannot finish before the deadline is refused with a reason.
            refusal = scheduler.admit([ClipWork(OUT_W, OUT_H, 300)], time.time() + 0.5, priority=1.0)[0]
            assert refusal and "exceeds" in refusal

            # Caller gone: cancelling the awaiting task stops the work; the worker stays usable.
            # (600 frames take tens of seconds here; the cancel lands within one engine step.)
            running = asyncio.create_task(scheduler.run(_spec(tmp_path, "abandoned", frames=600), priority=1.0))
            await asyncio.sleep(1.0)
            assert not running.done(), running.result()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            cancelled_at = time.perf_counter()
            again = await scheduler.run(_spec(tmp_path, "again"), priority=1.0)
            assert again.ok, again.message
            assert time.perf_counter() - cancelled_at < 10.0
            assert not (tmp_path / "abandoned.out.mp4").exists()
        finally:
            await scheduler.stop(grace_s=5.0)

        # A restarted miner (same GPU model, same throughput table) starts from the saved calibration.
        restarted = Scheduler(_config(tmp_path), MinerMetrics())
        await restarted.start()
        try:
            assert restarted.table.calibration.state() == scheduler.table.calibration.state()
            assert {r["variant"] for r in restarted.table.calibration.state()} == {"tiny"}
        finally:
            await restarted.stop(grace_s=5.0)

    asyncio.run(go())


@pytest.mark.slow
def test_an_idle_worker_that_dies_stops_counting_at_once_and_comes_back(tmp_path: Path) -> None:
    """The periodic check finds a worker process killed while idle: no capacity for admission or LengthCheck
    until it is back; a clip queued meanwhile waits for it instead of failing on the dead one."""
    from miner.jobs.scheduler import Scheduler

    metrics = MinerMetrics()

    async def go() -> None:
        scheduler = Scheduler(_config(tmp_path, worker_check_s=0.2), metrics)
        await scheduler.start()
        try:
            pid = scheduler._slots[0].info["pid"]
            os.kill(pid, signal.SIGKILL)
            began = time.monotonic()
            while scheduler.health()["workers_up"]:
                assert time.monotonic() - began < 10, scheduler.health()
                await asyncio.sleep(0.05)
            assert scheduler.capacity() == []
            assert scheduler.admit([ClipWork(OUT_W, OUT_H, FRAMES)], time.time() + 60, 1.0) == [
                "no worker is up (all lost or restarting)"]
            assert scheduler.health()["worker_status"][0]["state"] in ("down", "restarting")
            outcome = await scheduler.run(_spec(tmp_path, "queued-while-down"), priority=1.0)
            assert outcome.ok, outcome.message
            assert scheduler.health()["workers_up"] == 1 and scheduler._slots[0].info["pid"] != pid
            assert metrics.worker_restarts._value.get() == 1
        finally:
            await scheduler.stop(grace_s=5.0)

    asyncio.run(go())


class _Handle:
    """A worker that never runs anything: the scheduler's view of one that reported ``info``."""

    backend = "local"

    def __init__(self, index: int) -> None:
        self.index = index


def _report(fps: float) -> dict:
    return {"frames": 300, "frames_per_second": fps, "out_size": [3840, 2160], "variant": "tiny", "tiled": False,
            "tiles": 1, "tile_width": 0, "tile_height": 0}


def test_throughput_factor_is_one_series_per_worker_and_gpu_class(tmp_path: Path) -> None:
    """Two GPU classes calibrate apart and each worker shows its own class's factor; a worker back on
    another class loses its old class's series."""
    from miner.jobs.scheduler import Scheduler, _Slot
    from miner.jobs.spec import TaskOutcome

    metrics = MinerMetrics()
    scheduler = Scheduler(_config(tmp_path), metrics)
    slots = [_Slot(_Handle(i)) for i in range(3)]
    scheduler._slots = slots
    for slot, gpu in zip(slots, ("h100", "h200", "h100")):
        scheduler._mark_up(slot, {"node": "10.0.0.1", "gpu": gpu, "device_class": gpu})
    h100_fps = scheduler.table_for("h100").frames_per_second("h100", "tiny", 3840, 2160, calibrated=False)
    h200_fps = scheduler.table_for("h200").frames_per_second("h200", "tiny", 3840, 2160, calibrated=False)
    scheduler._calibrate(slots[0], TaskOutcome("a", True, report=_report(h100_fps * 0.8)))
    scheduler._calibrate(slots[1], TaskOutcome("b", True, report=_report(h200_fps * 1.2)))

    def factor(worker: str, device_class: str) -> float | None:
        return metrics.registry.get_sample_value("miner_throughput_factor", {
            "worker": worker, "device_class": device_class, "variant": "tiny", "size": "3840x2160"})

    assert factor("0", "h100") == pytest.approx(0.8) and factor("2", "h100") == pytest.approx(0.8)
    assert factor("1", "h200") == pytest.approx(1.2)
    scheduler._mark_down(slots[2], "down")
    scheduler._mark_up(slots[2], {"node": "10.0.0.2", "gpu": "h200", "device_class": "h200"})
    assert factor("2", "h100") is None and factor("2", "h200") == pytest.approx(1.2)
    assert "miner_throughput_factor{" in metrics.render().decode()


def test_warmup_shapes_come_from_the_task_table(tmp_path: Path) -> None:
    from miner.jobs.scheduler import Scheduler
    from upscaler.video.synthetic import write_test_clip

    config = load_miner_config(overrides={"jobs": {"warmup_tasks": ["SD24K", "SD2HD", "SD24K"]}}, environ={})
    scheduler = Scheduler(config, MinerMetrics())
    assert scheduler._warmup_shapes(config.get("jobs.warmup_tasks")) == ((960, 540, 3840, 2160), (960, 540, 1920, 1080))
    assert video_shape(write_test_clip(tmp_path / "warm.mp4", 64, 36, 29)) == (64, 36, 29)


def _core(tmp_path: Path) -> WorkerCore:
    """A worker core on the CPU as a worker process loads it (random-small weights), whose first attempts
    of a clip named ``oom...`` raise a real ``torch.OutOfMemoryError``."""
    config = _config(tmp_path)
    return WorkerCore(WorkerConfig(0, "cpu", config.get("upscaler.config"), config.upscaler_overrides,
                                   hooks=WorkerHooks(oom_if_src_contains="oom")), threading.Event())


def _wide_spec(tmp_path: Path, name: str) -> TaskSpec:
    """A clip whose 384x128 output can be cut in tiles (two 256x128 tiles with the 64 px overlap)."""
    spec = _spec(tmp_path, name)
    src = make_clip(tmp_path / f"{name}-wide.mp4", width=192, height=64)
    return TaskSpec(**{**spec.__dict__, "src": str(src), "width": 384, "height": 128})


def test_out_of_memory_retry_runs_the_layout_that_fits_the_memory_free_then(tmp_path: Path, monkeypatch,
                                                                            caplog) -> None:
    """After an out-of-memory the retry releases what the failed attempt held, reads the usable memory (the
    probe faked: the CPU has none) and runs the chooser's tiled layout for it (the memory model with its
    margin and the blend): two tiles, though the model says the untiled frame fits 40 GiB."""
    from upscaler import vram
    from upscaler.tile_plan import plan_layout

    core = _core(tmp_path)
    spec = _wide_spec(tmp_path, "oom-clip")
    first = core.run(spec)
    assert not first.ok and first.error_kind == ErrorKind.OOM and "injected out-of-memory" in first.message

    usable = 40 * 2**30
    events: list[str] = []
    monkeypatch.setattr(WorkerCore, "_free_memory", staticmethod(lambda: events.append("release")))
    monkeypatch.setattr(vram, "usable_bytes", lambda device: events.append("probe") or usable)
    layouts = []
    upscale = core.upscaler.upscale_file
    monkeypatch.setattr(core.upscaler, "upscale_file", lambda *a, **k: layouts.append(k["layout"]) or upscale(*a, **k))
    with caplog.at_level(logging.INFO, logger="miner.jobs.worker"):
        retry = core.run(spec.retry_tiled())
    assert retry.ok, retry.message
    expected = plan_layout(384, 128, usable, "tiny", core.settings, min_tiles=2)
    assert layouts == [expected] and expected.fits and expected.tiles == 2
    assert not plan_layout(384, 128, usable, "tiny", core.settings).tiled
    assert events[:2] == ["release", "probe"]  # the memory is read once the failed attempt's is released
    assert retry.attempts == 2 and (retry.report["tiled"], retry.report["tiles"]) == (True, 2)
    logged = [r.fields for r in caplog.records if r.getMessage() == "out-of-memory retry layout"]
    assert logged == [{"task_id": "oom-clip", "usable_gib": 40.0, "budget_gib": round(expected.budget_gib, 2),
                       "peak_gib": round(expected.peak_gib, 2), "tiles": 2, "tile": "256x128",
                       "decoder_frames": expected.decoder_frames, "blend_frames": expected.blend_frames,
                       "failed_peak_gib": None}]


def test_out_of_memory_retry_fails_with_the_reason_when_no_layout_fits(tmp_path: Path, monkeypatch) -> None:
    """With 5 GiB usable after the failure, no layout's predicted peak fits the budget (the weights alone
    take more): the clip fails at once with the reason, instead of running out of memory a second time."""
    from upscaler import vram
    from upscaler.tile_plan import plan_layout

    core = _core(tmp_path)
    spec = _wide_spec(tmp_path, "oom-clip").retry_tiled()
    monkeypatch.setattr(vram, "usable_bytes", lambda device: 5 * 2**30)
    monkeypatch.setattr(core.upscaler, "upscale_file", lambda *a, **k: pytest.fail("a retry that cannot fit ran"))
    failed = core.run(spec)
    smallest = plan_layout(384, 128, 5 * 2**30, "tiny", core.settings, min_tiles=2)
    assert not smallest.fits
    assert not failed.ok and failed.error_kind == ErrorKind.OOM and failed.attempts == 2
    assert failed.message == ("out of memory, and no tile layout fits the 5.0 GiB usable after it: the smallest, "
                              f"{smallest.describe()}; retry not run")


def _four_k_spec(tmp_path: Path, name: str) -> TaskSpec:
    """A 4K task (its upscale faked: the CPU model is not run at 4K)."""
    return TaskSpec(**{**_spec(tmp_path, name).__dict__, "width": 3840, "height": 2160})


def test_a_retry_after_an_under_predicted_tiled_attempt_takes_smaller_tiles(tmp_path: Path, monkeypatch,
                                                                            caplog) -> None:
    """A tiled first attempt that runs out of memory (the model under-predicted it) with the usable memory
    unchanged (the probe faked: 22 GiB both times) is retried below its predicted peak less the model's
    margins: more, smaller tiles than the 3 bands that ran out, which the memory alone would choose again."""
    from upscaler import vram
    from upscaler.tile_plan import MemoryModel, plan_layout

    core = _core(tmp_path)
    usable = 22 * 2**30
    monkeypatch.setattr(vram, "usable_bytes", lambda device: usable)
    layouts = []

    def out_of_memory(*args, **kwargs):
        layouts.append(kwargs["layout"])
        raise torch.OutOfMemoryError("CUDA out of memory (faked)")

    monkeypatch.setattr(core.upscaler, "upscale_file", out_of_memory)
    spec = _four_k_spec(tmp_path, "under-predicted")
    first = core.run(spec)
    ran = plan_layout(3840, 2160, usable, "tiny", core.settings)
    assert layouts == [ran] and ran.tiled and ran.fits and (ran.rows, ran.columns) == (3, 1)
    assert first.error_kind == ErrorKind.OOM and first.predicted_peak_gib == ran.peak_gib
    assert plan_layout(3840, 2160, usable, "tiny", core.settings, min_tiles=2) == ran  # the memory alone: same again

    with caplog.at_level(logging.INFO, logger="miner.jobs.worker"):
        retry = core.run(spec.retry_tiled(first.predicted_peak_gib))
    smaller = layouts[1]
    budget = MemoryModel.load(core.settings.throughput).budget_gib(int(ran.peak_gib * 2**30))
    assert smaller == plan_layout(3840, 2160, int(ran.peak_gib * 2**30), "tiny", core.settings, min_tiles=2)
    assert smaller.fits and smaller.budget_gib == pytest.approx(budget) and smaller.peak_gib <= budget < ran.peak_gib
    assert smaller.tiles > ran.tiles and smaller.tile_width * smaller.tile_height < ran.tile_width * ran.tile_height
    assert retry.error_kind == ErrorKind.OOM and retry.attempts == 2
    logged = [r.fields for r in caplog.records if r.getMessage() == "out-of-memory retry layout"]
    assert [(f["usable_gib"], f["failed_peak_gib"], f["tiles"]) for f in logged] == [
        (22.0, round(ran.peak_gib, 2), smaller.tiles)]


def test_a_retry_with_no_layout_below_the_failed_peak_fails_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    """When no layout predicts less than the failed attempt's peak (less the margins), the clip fails at once
    with that reason, though the usable memory (22 GiB) is larger."""
    from upscaler import vram
    from upscaler.tile_plan import plan_layout

    core = _core(tmp_path)
    monkeypatch.setattr(vram, "usable_bytes", lambda device: 22 * 2**30)
    monkeypatch.setattr(core.upscaler, "upscale_file", lambda *a, **k: pytest.fail("a retry that cannot fit ran"))
    failed = core.run(_four_k_spec(tmp_path, "tight").retry_tiled(5.0))
    smallest = plan_layout(3840, 2160, 5 * 2**30, "tiny", core.settings, min_tiles=2)
    assert not smallest.fits
    assert not failed.ok and failed.error_kind == ErrorKind.OOM and failed.attempts == 2
    assert failed.message == ("out of memory, and no tile layout fits the 22.0 GiB usable after it below the failed "
                              f"attempt's predicted 5.0 GiB: the smallest, {smallest.describe()}; retry not run")


def test_the_scheduler_retries_an_out_of_memory_once_on_the_same_worker(tmp_path: Path) -> None:
    """The retry is the same task's second attempt (the worker picks its layout, below the failed attempt's
    predicted peak), priced as a tiled clip."""
    from types import SimpleNamespace

    from miner.jobs.scheduler import Scheduler, clip_work

    sent: list[TaskSpec] = []

    async def execute(spec: TaskSpec) -> TaskOutcome:
        sent.append(spec)
        return TaskOutcome(spec.task_id, True)

    scheduler = Scheduler(_config(tmp_path), MinerMetrics())
    slot = SimpleNamespace(index=0, handle=SimpleNamespace(execute=execute))
    spec = _spec(tmp_path, "oom-clip")
    first = TaskOutcome.failed(spec.task_id, ErrorKind.OOM, "out of memory: injected")
    first.predicted_peak_gib = 19.2
    assert asyncio.run(scheduler._retry_tiled(slot, spec, first)).ok
    assert sent == [replace(spec, attempt=1, failed_peak_gib=19.2)] and not clip_work(spec).tiled and clip_work(sent[0]).tiled


def _one_worker_scheduler(usable: int, **upscaler: str):
    """A scheduler with the miner's [upscaler] overrides and one idle H200 worker reporting ``usable`` bytes."""
    from types import SimpleNamespace

    from miner.jobs.scheduler import IDLE, Scheduler, _Slot

    config = load_miner_config(overrides={"upscaler": upscaler, "jobs": {"calibration": {"state_path": ""}}},
                               environ={})
    made = Scheduler(config, MinerMetrics())
    made._slots = [_Slot(SimpleNamespace(index=0, backend="local"), state=IDLE,
                         info={"device_class": "h200", "free_vram_bytes": usable})]
    return made


def test_clips_are_priced_with_the_settings_the_workers_run(tmp_path: Path) -> None:
    """The scheduler prices clips in layouts chosen with the workers' settings (miner.jobs.worker.worker_settings:
    the miner's [upscaler] table), not the shipped upscaler.toml: an upscaler.config with 128 px tile overlap
    makes a 4K clip on a 22 GiB worker 3 columns of 1408x2160 instead of 3 bands of 3840x768."""
    from miner.jobs.worker import worker_settings
    from upscaler.configfiles import config_path
    from upscaler.tile_plan import plan_layout

    shipped = config_path("upscaler").read_text()
    assert "\ntile_overlap = 64 " in shipped
    custom = tmp_path / "upscaler-overlap128.toml"
    custom.write_text(shipped.replace("\ntile_overlap = 64 ", "\ntile_overlap = 128 "))
    usable = 22 * 2**30

    default, custom_overlap = _one_worker_scheduler(usable), _one_worker_scheduler(usable, config=str(custom))
    assert custom_overlap.settings == worker_settings(str(custom), "auto", custom_overlap.config.upscaler_overrides)
    layouts = [plan_layout(3840, 2160, usable, "tiny", s.settings) for s in (default, custom_overlap)]
    assert [(l.rows, l.columns, l.tile_width, l.tile_height) for l in layouts] == [(3, 1, 3840, 768), (1, 3, 1408, 2160)]
    plans = [s.plan(3840, 2160, 300, deadline_s=None) for s in (default, custom_overlap)]
    assert [p.tile_size for p in plans] == [768, 1408]
    clip = ClipWork(3840, 2160, 300)
    priced = [s.capacity()[0].seconds(clip) for s in (default, custom_overlap)]
    assert priced == [p.est_seconds for p in plans] and priced[0] != priced[1]


def test_workers_plan_tiles_with_the_configured_throughput_table(tmp_path: Path) -> None:
    """upscaler.throughput reaches the workers' settings: their tile layouts (and the scheduler's pricing of
    them) use that table's [[peak]] rows, as the planner's speed rows come from it; peaks 6 GiB higher than
    the shipped rows cut 4K on a 22 GiB worker into more tiles."""
    from miner.jobs.worker import worker_settings
    from tests.test_tile_plan import raised_peaks_table
    from upscaler.tile_plan import plan_layout

    table = raised_peaks_table(tmp_path, 6.0)
    usable = 22 * 2**30

    shipped, own = _one_worker_scheduler(usable), _one_worker_scheduler(usable, throughput=table)
    worker = worker_settings(own.config.get("upscaler.config"), "cuda:0", own.config.upscaler_overrides)
    assert own.settings.throughput == worker.throughput == table
    layouts = [plan_layout(3840, 2160, usable, "tiny", s.settings) for s in (shipped, own)]
    assert layouts[1].tiles > layouts[0].tiles
    plans = [s.plan(3840, 2160, 300, deadline_s=None) for s in (shipped, own)]
    assert [p.tile_size for p in plans] == [min(l.tile_width, l.tile_height) for l in layouts]


def test_a_tiled_clip_calibrates_the_tiled_estimates_only(tmp_path: Path) -> None:
    """A finished tiled clip (a GPU worker's report; the CPU worker above runs untiled) moves the tiled
    factor of its variant, measured against the estimate of its own layout, and leaves the untiled one."""
    from types import SimpleNamespace

    from miner.jobs.scheduler import Scheduler

    metrics = MinerMetrics()
    scheduler = Scheduler(_config(tmp_path), metrics)
    report = {"frames": FRAMES, "frames_per_second": 0.5, "out_size": [OUT_W, OUT_H], "variant": "tiny",
              "tiled": True, "tiles": 2, "tile_width": 128, "tile_height": 72}
    scheduler._calibrate(SimpleNamespace(info={"device_class": "cpu"}), TaskOutcome("tiled", True, report=report))
    table = scheduler.table_for("cpu")
    tiled_raw = table.frames_per_second("cpu", "tiny", OUT_W, OUT_H, tiled=True, calibrated=False)
    tiled_factor = table.calibration.factor("tiny+tiled", OUT_W, OUT_H)
    assert tiled_factor == min(max(0.5 / tiled_raw, 0.25), 2.0)
    assert [r["variant"] for r in table.calibration.state()] == ["tiny+tiled"]
