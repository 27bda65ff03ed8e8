"""The configured weights load, a short warm-up upscale against the throughput table, the HEVC encoder."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from miner.config import MinerConfig
from miner.doctor.result import CheckResult, DoctorContext
from miner.jobs.worker import WARMUP_FRAMES, device_class, free_vram, worker_settings
from upscaler.api import Upscaler
from upscaler.configfiles import load_config
from upscaler.planner import ClipWork, ThroughputTable, WorkerCapacity
from upscaler.settings import UpscalerSettings
from upscaler.video import FrameWriter, probe
from upscaler.video.synthetic import write_test_clip
from upscaler.weights import RANDOM_SPECS, WeightsError, resolve_weights

WEIGHTS, WARMUP, ENCODER = "weights", "warm-up", "encoder"
CPU_WARMUP = (64, 36, 128, 72, 9)  # in_w, in_h, out_w, out_h, frames: a CPU runs random-small, only reported
ENCODER_SIZE, ENCODER_FRAMES = (640, 360), 8


def _download_fix(settings: UpscalerSettings, directory: str | None) -> str:
    repo = load_config("models")["weights"]["repos"][settings.model_version]
    target = f" --local-dir {directory}" if directory else ""
    return f"download them: `huggingface-cli download {repo}{target}` (or set upscaler.weights / --weights)"


def check_weights(context: DoctorContext) -> CheckResult:
    """``weights = auto`` must already be in the Hugging Face cache (checked offline, so the doctor never
    downloads gigabytes); then the worker's models load strictly, with the worker's settings
    (:func:`miner.jobs.worker.worker_settings`). The loaded upscaler is kept for the warm-up."""
    config = context.config
    settings = worker_settings(config.get("upscaler.config"), context.device, config.upscaler_overrides)
    if settings.weights == "auto":
        try:
            resolve_weights("auto", settings.model_version, "tiny", offline=True, preset=settings.model_preset)
        except WeightsError as exc:
            return CheckResult.fail(WEIGHTS, f"weights = auto: FlashVSR {settings.model_version} is not in the Hugging "
                                             "Face cache (the miner would download it at start)", str(exc))
    began = time.perf_counter()
    try:
        upscaler = Upscaler.load(settings)
    except WeightsError as exc:
        directory = None if settings.weights in ("auto", *RANDOM_SPECS) else settings.weights
        return CheckResult.fail(WEIGHTS, f"weights {settings.weights!r} do not load: {exc}",
                                _download_fix(settings, directory))
    context.found["upscaler"] = upscaler
    return CheckResult.ok(WEIGHTS, f"{upscaler.weights_label} ({settings.model_version}, "
                                   f"{str(upscaler.dtype).removeprefix('torch.')}) loaded on {upscaler.device} in "
                                   f"{time.perf_counter() - began:.1f} s")


def warmup_shape(config: MinerConfig, device: str) -> tuple[int, int, int, int, int]:
    """``(in_w, in_h, out_w, out_h, frames)``: the first ``jobs.warmup_tasks`` type, one second of it, on a GPU."""
    if not device.startswith("cuda"):
        return CPU_WARMUP
    task = config.tasks[config.get("jobs.warmup_tasks")[0] if config.get("jobs.warmup_tasks") else "SD24K"]
    return task.width // task.scale, task.height // task.scale, task.width, task.height, WARMUP_FRAMES


def check_warmup(context: DoctorContext) -> CheckResult:
    """Upscale a generated one-second clip as a worker would (its settings: tiled from this GPU's usable
    memory where the frame does not fit; on a GPU twice: the first pass compiles and autotunes) and compare
    its frames/s with the throughput table and the planner's estimate for this worker's memory."""
    upscaler = context.found.get("upscaler")
    if upscaler is None:
        return CheckResult.skip(WARMUP, "no upscaler loaded (see the weights check)")
    config = context.config
    in_w, in_h, out_w, out_h, frames = warmup_shape(config, context.device)
    gpu = context.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="flashvsr-doctor-") as tmp:
        src = write_test_clip(Path(tmp) / "warm.mp4", in_w, in_h, frames)
        for _ in range(2 if gpu else 1):
            report = upscaler.upscale_file(src, Path(tmp) / "out.mp4", width=out_w, height=out_h, variant="tiny",
                                           codec=config.get("upscaler.codec"), crf=int(config.get("upscaler.crf")),
                                           preset=config.get("upscaler.preset"))
    measured = report.frames_per_second
    seconds = report.seconds["total"]
    tiles = f" ({report.tiles} tiles of {report.tile_width}x{report.tile_height})" if report.tiled else ""
    shape = f"{frames} frames {in_w}x{in_h}->{out_w}x{out_h}{tiles} in {seconds:.1f} s = {measured:.2f} frames/s"
    table = ThroughputTable.load(config.get("upscaler.throughput"), config.get("upscaler.precision"))
    name = device_class(context.device)
    worker = WorkerCapacity(name, table, free_vram_bytes=free_vram(context.device), settings=upscaler.settings)
    try:
        expected = table.frames_per_second(name, "tiny", out_w, out_h, calibrated=False)
        estimate = worker.seconds(ClipWork(out_w, out_h, frames))
    except LookupError:
        return CheckResult.ok(WARMUP, f"{shape}; configs/throughput.toml has no Tiny row to compare with")
    rows = "" if any(e.device == name for e in table.entries) else f" (no {name} rows: H100 rows x {table.unknown_gpu_factor})"
    return warmup_result(f"{shape}; table {expected:.2f} frames/s{rows}, planner estimate {estimate:.1f} s",
                         seconds, estimate, gpu=gpu)


def warmup_result(detail: str, seconds: float, estimate: float, *, gpu: bool) -> CheckResult:
    """On a GPU, FAIL when the clip took longer than the planner's estimate for it (admission would accept
    rounds that finish late); on the CPU the figure is only reported."""
    if not gpu:
        return CheckResult.ok(WARMUP, f"{detail} (CPU: reported only)")
    if seconds > estimate:
        return CheckResult.fail(WARMUP, f"{detail}: slower than the planner assumes, rounds it accepts would finish late",
                                "find where the time goes with `flashvsr-profile --weights random --compile --kv-cache fp8 "
                                "--case tiny:SD24K:45 --gaps` (README, Troubleshooting), or measure this GPU with "
                                "flashvsr-bench and add its rows to configs/throughput.toml")
    return CheckResult.ok(WARMUP, detail)


def check_encoder(context: DoctorContext) -> CheckResult:
    """PyAV encodes a few frames with the configured codec, preset and CRF; the file probes as that codec."""
    config = context.config
    codec = config.get("upscaler.codec")
    width, height = ENCODER_SIZE
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(ENCODER_FRAMES, height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="flashvsr-doctor-") as tmp:
        path = Path(tmp) / "encoder.mp4"
        began = time.perf_counter()
        try:
            with FrameWriter(path, width, height, 30, codec=codec, crf=int(config.get("upscaler.crf")),
                             preset=config.get("upscaler.preset")) as writer:
                writer.write(frames)
            encoder = writer.encoder
            info = probe(path)
        except Exception as exc:  # PyAV/FFmpeg errors: a missing encoder, a bad option
            return CheckResult.fail(ENCODER, f"{codec} encoding failed: {type(exc).__name__}: {exc}",
                                    f"PyAV's FFmpeg needs the {codec} encoder (libx265): reinstall av from the "
                                    "project's pinned environment (`bash scripts/main.sh`)")
    seconds = time.perf_counter() - began
    if info.codec != codec or info.frames != ENCODER_FRAMES:
        return CheckResult.fail(ENCODER, f"{encoder} wrote {info.frames} {info.codec} frames, expected "
                                         f"{ENCODER_FRAMES} {codec}", "reinstall av: `bash scripts/main.sh`")
    return CheckResult.ok(ENCODER, f"{encoder} ({codec}, preset {config.get('upscaler.preset')}) encoded "
                                   f"{ENCODER_FRAMES} frames {width}x{height} in {seconds:.2f} s")
