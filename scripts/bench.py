"""``flashvsr-bench``: end-to-end throughput of the FlashVSR pipelines, per stage, with peak GPU memory.

    flashvsr-bench --weights random --case tiny:SD24K:300 --case tiny:SD2HD:300 --case full:SD2HD:60 \\
        --compare-sdpa --json runs/bench.json

Each case upscales a generated clip at the task's input size (Vidaio geometry) to its output size,
decode to encoded MP4, after a short warm-up of the same shape (Triton autotuning, cuDNN plans).
Speed does not depend on weight values, so random weights of the real shapes give real numbers;
with random weights the output is noise, which makes the encoder slower than on real content.
A case with ``@GiB`` (or ``--max-vram GiB``) runs with GPU memory capped there and tiles chosen from
it, as on a 24 GB or 16 GB card (``scripts/bench_small_gpu.sh``); one without either runs uncapped
(every case under exactly its own cap). A row has the tiling the case ran with and the miner
planner's estimate next to the measured time. ``--seam-error N`` compares every tiled
case's output with the untiled output over N frames (same weights), at and away from the seams.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import kernels
from miner.protocol.tasks import UpscalingTask
from miner.jobs.worker import device_class
from upscaler import vram
from upscaler.api import Upscaler
from upscaler.blend_memory import blend_bytes
from upscaler.geometry import Geometry, round_up
from upscaler.planner import ThroughputTable, plan
from upscaler.report import GIB, UpscaleReport
from upscaler.seams import seam_error
from upscaler.settings import KV_CACHE_DTYPES, PRECISIONS, TilingSettings, UpscalerSettings, VariantSettings, load_settings
from upscaler.tiled import run_tiles
from upscaler.timing import StageTimer
from upscaler.video import FrameReader
from upscaler.video.synthetic import write_test_clip

log = logging.getLogger("flashvsr-bench")

WARMUP_FRAMES = 29  # the first step (21 frames) and one steady step (8)
STAGES = ("lq_proj", "dit", "decoder", "color_fix", "to_uint8", "encode", "encode_wait", "decode_wait", "tile_store",
          "tile_store_wait", "tile_read_wait", "tile_blend")
"""GPU stages (CUDA events), then host-side: ``encode`` is the encoder thread's busy time (overlapped
with the GPU), ``encode_wait`` the time the GPU loop was blocked on a full encoder queue, ``decode_wait``
the time it waited for decoded input frames (untiled runs: a GPU stage that includes such waits, the
LQ projection's, is longer by up to that much); for tiled runs
``tile_store`` the store thread's file writing (overlapped), ``tile_store_wait`` the time the GPU loop
waited for it, ``tile_read_wait`` and ``tile_blend`` the blend's wait for its reads and its GPU time."""


@dataclass(frozen=True)
class Case:
    """One benchmark case: variant, Vidaio task (input and output size), frames, tiling, memory cap."""

    variant: str
    task: UpscalingTask
    frames: int
    tile_size: int = 0
    tile_height: int = 0
    auto_tiles: bool = False
    max_vram_gib: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Case":
        """``variant:TASK:frames[:tile][@GiB]``: tile ``1024`` (squares), ``3840x768`` (width x height) or
        ``auto`` (from free memory); ``@22`` caps GPU memory at 22 GiB for the case (then tiles default to
        auto), e.g. ``tiny:SD24K:300``, ``tiny:SD24K:60:1024``, ``tiny:SD24K:300@22``."""
        spec, _, cap = text.partition("@")
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise argparse.ArgumentTypeError(f"case {text!r} is not variant:TASK:frames[:tile][@GiB]")
        tile = parts[3] if len(parts) == 4 else ("auto" if cap else "0")
        width, _, height = tile.partition("x")
        try:
            max_vram = float(cap) if cap else 0.0
            sizes = (0, 0) if tile == "auto" else (int(width), int(height or 0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"case {text!r}: tile must be N, WxH or auto; @ a number of GiB") from None
        return cls(parts[0], UpscalingTask.parse(parts[1]), int(parts[2]), *sizes, tile == "auto", max_vram)

    @property
    def name(self) -> str:
        tile = "tileauto" if self.auto_tiles else (
            f"tile{self.tile_size}" + (f"x{self.tile_height}" if self.tile_height else "") if self.tile_size else "")
        return f"{self.variant}:{self.task.value}:{self.frames}" + (f":{tile}" if tile else "") + (
            f"@{self.max_vram_gib:g}" if self.max_vram_gib else "")


def decode_fps(path: Path) -> float:
    """Frames/s of decoding ``path`` alone (the input side's ceiling)."""
    began = time.perf_counter()
    count = sum(1 for _ in FrameReader(path, prefetch=8))
    return count / (time.perf_counter() - began)


def case_settings(base: UpscalerSettings, case: Case) -> UpscalerSettings:
    """``base`` with the case's tiling (none, auto, or ``case.tile_size`` with the overlap capped at half a tile)."""
    if case.auto_tiles:
        return base.with_overrides(tiling=replace(base.tiling, tile_size=0, tile_height=0, auto=True)).validate()
    tiling = TilingSettings(case.tile_size, base.tiling.tile_overlap, case.tile_height)
    if case.tile_size:
        tiling = replace(tiling, tile_overlap=min(tiling.tile_overlap, case.tile_size // 2, tiling.height // 2))
    return base.with_overrides(tiling=tiling).validate()


def run_case(upscaler: Upscaler, case: Case, src: Path, warm: Path, out_dir: Path, codec: str, preset: str | None,
             table: ThroughputTable | None = None) -> dict[str, Any]:
    """Warm up, then time one upscale under the case's memory cap; a dict of the results (or of the
    error), with the tiling the run chose and, given ``table``, the planner's estimate for it."""
    width, height = case.task.output_size
    base = upscaler.settings
    upscaler.settings = case_settings(base, case)
    torch.cuda.empty_cache()
    try:
        with vram.capped(upscaler.device, case.max_vram_gib):
            upscaler.upscale_file(warm, out_dir / "warm.mp4", width=width, height=height, variant=case.variant,
                                  codec=codec, preset=preset)
            torch.cuda.empty_cache()
            usable = vram.usable_bytes(upscaler.device)
            geometry = Geometry.for_target(case.task.input_size, (width, height), upscaler.settings.spatial_multiple)
            tiling, variant = upscaler.plan_tiles(geometry, upscaler.settings.variant(case.variant))
            report: UpscaleReport = upscaler.upscale_file(src, out_dir / f"{case.variant}-{case.task.value}.mp4",
                                                          width=width, height=height, variant=case.variant, codec=codec,
                                                          preset=preset)
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {"case": case.name, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    finally:
        upscaler.settings = base
        torch.cuda.empty_cache()
    seconds = report.seconds
    frames = report.frames
    row = {
        "case": case.name, "precision": upscaler.settings.precision, "variant": case.variant, "task": case.task.value,
        "frames": frames,
        "in_size": list(report.in_size), "out_size": list(report.out_size), "tile_size": case.tile_size,
        "max_vram_gib": case.max_vram_gib, "usable_gib": round((usable or 0) / GIB, 2),
        "tiling": tiling_fields(report, tiling, variant, geometry, upscaler.settings.spatial_multiple),
        "attention": kernels.active_backend(),
        "total_s": round(seconds["total"], 3), "fps": round(report.frames_per_second, 2),
        "ms_per_frame": {k: round(1000 * seconds[k] / frames, 2) for k in STAGES if k in seconds},
        "peak_vram_gib": round(report.peak_vram_bytes / GIB, 2),
    }
    if table is not None:
        row["planner"] = planner_check(table, case, frames, usable, report.seconds["total"],
                                       device_class(str(upscaler.device)), base)
    return row


def tiling_fields(report: UpscaleReport, tiling: TilingSettings, variant: VariantSettings, geometry: Geometry,
                  multiple: int) -> dict[str, Any]:
    """The layout a run used: tiles, the model frame it ran at and its decoder frames per pass (a ``[[peak]]``
    row's keys), and the blend group held beside the last tile with its GiB (the row's ``blend_gib``)."""
    if tiling.enabled:
        model = (round_up(tiling.tile_size, multiple), round_up(tiling.height, multiple))
        blend = blend_bytes(geometry.out_height, geometry.out_width, report.tiles, report.tile_height,
                            report.tile_width, tiling.blend_frames) / GIB
    else:
        model, blend = (geometry.model_width, geometry.model_height), 0.0
    return {"tile_width": report.tile_width, "tile_height": report.tile_height,
            "overlap": tiling.tile_overlap if tiling.enabled else 0, "tiles": report.tiles,
            "decoder": variant.decoder, "model_width": model[0], "model_height": model[1],
            "decoder_frames_per_pass": variant.frames_per_pass(model[0] * model[1]),
            "blend_frames": tiling.blend_frames if tiling.enabled else 0, "blend_gib": round(blend, 3)}


def planner_check(table: ThroughputTable, case: Case, frames: int, usable: int | None, measured_s: float,
                  device: str, settings: UpscalerSettings) -> dict[str, Any]:
    """The miner planner's plan for this clip with this usable memory on ``device`` (its class: h100,
    h200...) and the upscaler's ``settings``, and its estimate against the measured seconds (without the
    planner's safety margin)."""
    width, height = case.task.output_size
    chosen = plan(width, height, frames, free_vram_bytes=usable, deadline_s=None, table=table, device=device,
                  variant=case.variant, settings=settings)
    raw = (chosen.est_seconds - table.clip_overhead_s) / table.safety_margin + table.clip_overhead_s
    return {"device": device, "tile_size": chosen.tile_size, "est_s": round(raw, 2),
            "est_with_margin_s": round(chosen.est_seconds, 2), "est_over_measured": round(raw / measured_s, 3)}


def seam_rows(upscaler: Upscaler, case: Case, src: Path, overlaps: list[int]) -> list[dict[str, Any]]:
    """Tiled against untiled output of ``src`` (same weights, uint8 frames before encoding) for the tiling
    the case runs with under its cap, at its overlap and at each of ``overlaps``: PSNR, mean and max
    absolute difference over the frame, at the seams and away from them (:func:`upscaler.seams.seam_error`)."""
    width, height = case.task.output_size
    geometry = Geometry.for_target(case.task.input_size, (width, height), upscaler.settings.spatial_multiple)
    base = upscaler.settings
    upscaler.settings = case_settings(base, case)
    torch.cuda.empty_cache()
    try:
        with vram.capped(upscaler.device, case.max_vram_gib):
            tiling, variant = upscaler.plan_tiles(geometry, upscaler.settings.variant(case.variant))
    finally:
        upscaler.settings = base
    if not tiling.enabled:
        return []
    rows = [dict(case=case.name, precision=base.precision, **row)
            for row in seam_comparison(upscaler, src, geometry, variant, tiling, overlaps)]
    torch.cuda.empty_cache()
    return rows


def seam_comparison(upscaler: Upscaler, src: Path, geometry: Geometry, variant: VariantSettings,
                    tiling: TilingSettings, overlaps: list[int]) -> list[dict[str, Any]]:
    """The untiled output of ``src`` against ``tiling``'s at its overlap and at each of ``overlaps``."""

    def frames(run_tiling: TilingSettings) -> torch.Tensor:
        timer = StageTimer(upscaler.device)
        return torch.cat(list(upscaler.upscale_frames(src, geometry, variant, timer=timer, tiling=run_tiling)))

    untiled = frames(TilingSettings())
    rows = []
    for overlap in dict.fromkeys([tiling.tile_overlap, *overlaps]):
        run_tiling = replace(tiling, tile_overlap=overlap)
        tiles = run_tiles(geometry, run_tiling)
        error = seam_error(frames(run_tiling), untiled, tiles)
        rows.append({"frames": int(untiled.shape[0]), "tile_width": run_tiling.tile_size, "tile_height": run_tiling.height,
                     "tiles": len(tiles), "overlap": overlap, **error})
        print(f"seam error {len(tiles)} tiles of {run_tiling.tile_size}x{run_tiling.height} overlap {overlap}: "
              + "; ".join(f"{k} {v['psnr_db']} dB, max {v['max_abs']:.0f}" for k, v in error.items()), flush=True)
    return rows


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
                   help="variant:TASK:frames[:tile][@GiB], tile N, WxH or auto (repeatable; default tiny:SD2HD:300 and "
                        "tiny:SD24K:300)")
    p.add_argument("--weights", default="random", help="weights spec (default: random weights of the real shapes)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT's element-wise chains")
    p.add_argument("--kv-cache", choices=KV_CACHE_DTYPES, default="model", help="K/V cache storage")
    p.add_argument("--precision", action="append", choices=PRECISIONS, dest="precisions",
                   help="DiT compute precision (repeatable: each case runs in each; default bf16)")
    p.add_argument("--fp8-layers", help="comma-separated linears run in FP8 with --precision fp8 "
                                        "(default: configs/upscaler.toml fp8_layers)")
    p.add_argument("--fp8-fast-accum", action=argparse.BooleanOptionalAction,
                   help="with --precision fp8: products without fp32 promotion of the accumulator, or with it "
                        "(--no-fp8-fast-accum; default: configs/upscaler.toml fp8_fast_accum)")
    p.add_argument("--fp8-attention", action=argparse.BooleanOptionalAction,
                   help="with --precision fp8 and --kv-cache fp8: attention's products in FP8 (sm_90), or over the "
                        "dequantised cache (--no-fp8-attention; default: configs/upscaler.toml fp8_attention)")
    p.add_argument("--codec", default="hevc", choices=("h264", "hevc"), help="output codec (Vidaio scores HEVC)")
    p.add_argument("--preset", help="encoder preset (default: configs/video.toml)")
    p.add_argument("--compare-sdpa", action="store_true", help="also run each case with dense flash SDPA attention")
    p.add_argument("--baseline-frames", type=int, default=45, help="frames per case in the dense-SDPA baseline")
    p.add_argument("--max-vram", type=float, default=0.0, metavar="GIB",
                   help="cap GPU memory at GIB for cases without their own @GiB (untiled cases then tile automatically)")
    p.add_argument("--seam-error", type=int, default=0, metavar="FRAMES",
                   help="for every tiled case, also compare tiled and untiled output over FRAMES frames (0: off)")
    p.add_argument("--seam-overlaps", type=lambda t: [int(v) for v in t.split(",") if v], default=[],
                   help="further overlaps to measure the seam error at, e.g. 32,128")
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
    if args.max_vram:
        cases = [c if c.max_vram_gib else replace(c, max_vram_gib=args.max_vram, auto_tiles=c.auto_tiles or not c.tile_size)
                 for c in cases]
    precisions = list(dict.fromkeys(args.precisions or ["bf16"]))
    fp8_layers = tuple(g for g in args.fp8_layers.split(",") if g) if args.fp8_layers is not None else None
    props = torch.cuda.get_device_properties(0)
    rows: list[dict[str, Any]] = []
    seams: list[dict[str, Any]] = []
    labels: set[str] = set()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "weights": "", "dtype": args.dtype, "precisions": precisions, "fp8_layers": [], "kv_cache": args.kv_cache,
        "compile": args.compile, "codec": args.codec, "decode_fps": {}, "rows": rows, "seam_error": seams,
    }

    def save() -> None:  # after every row: a run stopped by a time limit keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(prefix="flashvsr-bench-") as tmp:
        work = Path(tmp)
        inputs: dict[tuple[UpscalingTask, int], Path] = {}

        def clip(task: UpscalingTask, frames: int) -> Path:
            if (task, frames) not in inputs:
                w, h = task.input_size
                inputs[(task, frames)] = write_test_clip(work / f"{task.value}-{frames}.mp4", w, h, frames)
            return inputs[(task, frames)]

        decode = {c.task.value: round(decode_fps(clip(c.task, c.frames)), 1) for c in cases}
        result["decode_fps"] = decode
        backends = ["default", "dense"] if args.compare_sdpa else ["default"]
        for precision in precisions:
            table = ThroughputTable.load(precision=precision)
            upscaler = Upscaler.load(load_settings(weights=args.weights, device="cuda", dtype=args.dtype,
                                                   kv_cache_dtype=args.kv_cache, compile=args.compile,
                                                   precision=precision, fp8_layers=fp8_layers,
                                                   fp8_fast_accum=args.fp8_fast_accum,
                                                   fp8_attention=args.fp8_attention))
            labels.add(upscaler.weights_label)
            result["weights"] = ",".join(sorted(labels))
            result["fp8_layers"] = list(upscaler.settings.fp8_layers)
            result["fp8_fast_accum"] = upscaler.settings.fp8_fast_accum
            for backend in backends:
                kernels.set_backend(None if backend == "default" else backend)
                for case in cases:
                    if backend == "dense":
                        case = replace(case, frames=min(case.frames, args.baseline_frames))
                    row = run_case(upscaler, case, clip(case.task, case.frames), clip(case.task, WARMUP_FRAMES), work,
                                   args.codec, args.preset, table if backend == "default" else None)
                    row["fp8_attention"] = upscaler.fp8_attention_active
                    rows.append(row)
                    save()
                    print(_table([row]).splitlines()[-1], flush=True)
            kernels.set_backend(None)
            for case in cases:
                if args.seam_error and (case.tile_size or case.auto_tiles):
                    seams.extend(seam_rows(upscaler, case, clip(case.task, args.seam_error), args.seam_overlaps))
                    save()
            del upscaler  # the next precision's models load into the memory these held
            gc.collect()
            torch.cuda.empty_cache()
    print()
    print(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, weights {result['weights']}, "
          f"{args.dtype}, output {args.codec}; decode-only fps per task input: {decode}")
    print(_table(rows))
    save()
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
