"""``flashvsr-bench``: end-to-end throughput of the FlashVSR pipelines, per stage, with peak GPU memory.

    flashvsr-bench --weights random --case tiny:SD24K:300 --case tiny:SD2HD:300 --case full:SD2HD:60 \\
        --compare-sdpa --json runs/bench.json

Each case upscales a generated clip at the task's input size (Vidaio geometry) to its output size,
decode to encoded MP4, after a short warm-up of the same shape (Triton autotuning, cuDNN plans).
Speed does not depend on weight values, so random weights of the real shapes give real numbers;
with random weights the output is noise, which makes the encoder slower than on real content.
``--compare-sdpa`` runs every case again (with ``--baseline-frames`` frames) with attention replaced
by dense flash SDPA over the whole sequence, in the same process: the speed without LCSA sparsity.
``--precision bf16 --precision fp8`` runs every case in each compute precision, in the same process
(the models reloaded per precision, the previous ones released first, so peak memory compares).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import kernels
from miner.protocol.tasks import UpscalingTask
from upscaler.api import Upscaler
from upscaler.report import GIB, UpscaleReport
from upscaler.settings import KV_CACHE_DTYPES, PRECISIONS, TilingSettings, UpscalerSettings, load_settings
from upscaler.video import FrameReader
from upscaler.video.synthetic import write_test_clip

log = logging.getLogger("flashvsr-bench")

WARMUP_FRAMES = 29  # the first step (21 frames) and one steady step (8)
STAGES = ("lq_proj", "dit", "decoder", "color_fix", "to_uint8", "encode", "encode_wait", "tile_store", "tile_read_wait", "tile_blend")
"""GPU stages (CUDA events), then host-side: ``encode`` is the encoder thread's busy time (overlapped
with the GPU), ``encode_wait`` the time the GPU loop was blocked on a full encoder queue."""


@dataclass(frozen=True)
class Case:
    """One benchmark case: variant, Vidaio task (input and output size), frames, tile size."""

    variant: str
    task: UpscalingTask
    frames: int
    tile_size: int = 0

    @classmethod
    def parse(cls, text: str) -> "Case":
        """``variant:TASK:frames[:tile]``, e.g. ``tiny:SD24K:300`` or ``tiny:SD24K:300:1024``."""
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise argparse.ArgumentTypeError(f"case {text!r} is not variant:TASK:frames[:tile]")
        tile = int(parts[3]) if len(parts) == 4 else 0
        return cls(parts[0], UpscalingTask.parse(parts[1]), int(parts[2]), tile)

    @property
    def name(self) -> str:
        return f"{self.variant}:{self.task.value}:{self.frames}" + (f":tile{self.tile_size}" if self.tile_size else "")


def decode_fps(path: Path) -> float:
    """Frames/s of decoding ``path`` alone (the input side's ceiling)."""
    began = time.perf_counter()
    count = sum(1 for _ in FrameReader(path, prefetch=8))
    return count / (time.perf_counter() - began)


def case_settings(base: UpscalerSettings, case: Case) -> UpscalerSettings:
    """``base`` with the case's tiling (none, or ``case.tile_size`` with the overlap capped at half a tile)."""
    overlap = min(base.tiling.tile_overlap, case.tile_size // 2) if case.tile_size else base.tiling.tile_overlap
    return base.with_overrides(tiling=TilingSettings(case.tile_size, overlap)).validate()


def run_case(upscaler: Upscaler, case: Case, src: Path, warm: Path, out_dir: Path, codec: str, preset: str | None) -> dict[str, Any]:
    """Warm up, then time one upscale; a dict of the results (or of the error)."""
    width, height = case.task.output_size
    base = upscaler.settings
    upscaler.settings = case_settings(base, case)
    try:
        upscaler.upscale_file(warm, out_dir / "warm.mp4", width=width, height=height, variant=case.variant, codec=codec, preset=preset)
        torch.cuda.empty_cache()
        report: UpscaleReport = upscaler.upscale_file(src, out_dir / f"{case.variant}-{case.task.value}.mp4", width=width,
                                                      height=height, variant=case.variant, codec=codec, preset=preset)
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {"case": case.name, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    finally:
        upscaler.settings = base
    seconds = report.seconds
    frames = report.frames
    return {
        "case": case.name, "precision": upscaler.settings.precision, "variant": case.variant, "task": case.task.value, "frames": frames,
        "in_size": list(report.in_size), "out_size": list(report.out_size), "tile_size": case.tile_size,
        "attention": kernels.active_backend(),
        "total_s": round(seconds["total"], 3), "fps": round(report.frames_per_second, 2),
        "ms_per_frame": {k: round(1000 * seconds[k] / frames, 2) for k in STAGES if k in seconds},
        "peak_vram_gib": round(report.peak_vram_bytes / GIB, 2),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'case':28} {'precision':9} {'attention':9} {'frames':>6} {'fps':>7} {'peak GiB':>8}  ms/frame: " + " ".join(f"{s:>9}" for s in STAGES)
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:28} {r.get('precision', ''):9} {r.get('attention', ''):9} ERROR {r['error']}")
            continue
        stages = " ".join(f"{r['ms_per_frame'].get(s, 0.0):9.2f}" for s in STAGES)
        lines.append(f"{r['case']:28} {r['precision']:9} {r['attention']:9} {r['frames']:6d} {r['fps']:7.2f} {r['peak_vram_gib']:8.2f}            {stages}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashvsr-bench", description="End-to-end FlashVSR throughput per stage.")
    p.add_argument("--case", action="append", type=Case.parse, dest="cases",
                   help="variant:TASK:frames[:tile] (repeatable; default tiny:SD2HD:300 and tiny:SD24K:300)")
    p.add_argument("--weights", default="random", help="weights spec (default: random weights of the real shapes)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT's element-wise chains")
    p.add_argument("--kv-cache", choices=KV_CACHE_DTYPES, default="model", help="K/V cache storage")
    p.add_argument("--precision", action="append", choices=PRECISIONS, dest="precisions",
                   help="DiT compute precision (repeatable: each case runs in each; default bf16)")
    p.add_argument("--fp8-layers", help="comma-separated linears run in FP8 with --precision fp8 "
                                        "(default: configs/upscaler.toml fp8_layers)")
    p.add_argument("--codec", default="hevc", choices=("h264", "hevc"), help="output codec (Vidaio scores HEVC)")
    p.add_argument("--preset", help="encoder preset (default: configs/video.toml)")
    p.add_argument("--compare-sdpa", action="store_true", help="also run each case with dense flash SDPA attention")
    p.add_argument("--baseline-frames", type=int, default=45, help="frames per case in the dense-SDPA baseline")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not torch.cuda.is_available():
        print("flashvsr-bench measures GPU speed: no CUDA device here")
        return 2
    cases = args.cases or [Case("tiny", UpscalingTask.SD2HD, 300), Case("tiny", UpscalingTask.SD24K, 300)]
    precisions = list(dict.fromkeys(args.precisions or ["bf16"]))
    fp8_layers = tuple(g for g in args.fp8_layers.split(",") if g) if args.fp8_layers is not None else None
    rows: list[dict[str, Any]] = []
    labels: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="flashvsr-bench-") as tmp:
        work = Path(tmp)
        inputs: dict[tuple[UpscalingTask, int], Path] = {}

        def clip(task: UpscalingTask, frames: int) -> Path:
            if (task, frames) not in inputs:
                w, h = task.input_size
                inputs[(task, frames)] = write_test_clip(work / f"{task.value}-{frames}.mp4", w, h, frames)
            return inputs[(task, frames)]

        decode = {c.task.value: round(decode_fps(clip(c.task, c.frames)), 1) for c in cases}
        backends = ["default", "dense"] if args.compare_sdpa else ["default"]
        for precision in precisions:
            upscaler = Upscaler.load(load_settings(weights=args.weights, device="cuda", dtype=args.dtype,
                                                   kv_cache_dtype=args.kv_cache, compile=args.compile,
                                                   precision=precision, fp8_layers=fp8_layers))
            labels.add(upscaler.weights_label)
            upscaler_fp8_layers = upscaler.settings.fp8_layers
            for backend in backends:
                kernels.set_backend(None if backend == "default" else backend)
                for case in cases:
                    if backend == "dense":
                        case = Case(case.variant, case.task, min(case.frames, args.baseline_frames), case.tile_size)
                    row = run_case(upscaler, case, clip(case.task, case.frames), clip(case.task, WARMUP_FRAMES), work,
                                   args.codec, args.preset)
                    rows.append(row)
                    print(_table([row]).splitlines()[-1], flush=True)
            del upscaler  # the next precision's models load into the memory these held
            gc.collect()
            torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(0)
    result = {
        "date": time.strftime("%Y-%m-%d"), "gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "weights": ",".join(sorted(labels)), "dtype": args.dtype, "precisions": precisions,
        "fp8_layers": list(upscaler_fp8_layers), "kv_cache": args.kv_cache, "compile": args.compile, "codec": args.codec, "decode_fps": decode, "rows": rows,
    }
    print()
    print(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, weights {result['weights']}, "
          f"{args.dtype}, output {args.codec}; decode-only fps per task input: {decode}")
    print(_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
