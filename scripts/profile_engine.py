"""``flashvsr-profile``: where the GPU time and memory of one streaming upscale go.

    flashvsr-profile --weights random --case tiny:SD24K:61 --kv-cache fp8 --compile --top 12 --memory

Runs one case twice (a warm-up, then the measured run) without encoding, and prints for the
measured run: per engine stage the GPU milliseconds per frame, the memory held when the stage
starts and its peak inside the stage; then, per stage, the GPU kernels that take the most time.

The PyTorch profiler records the whole measured run (with Kineto's cap on its GPU activity buffers
raised, so that a long run is not cut off). Every kernel, copy and memset of the trace is given to
a stage by its launch, the CUDA runtime or driver call with the same correlation id (a driver call
is how Triton launches our kernels from Python): the innermost ``stage:<name>`` range that
contains the launch on the launching thread. Work whose launch is not in the trace, or that was
launched outside every stage, is listed under ``(unattributed)``. Each stage's header compares its
kernel time with the stage's GPU time by the stage timer (CUDA events), both over the whole run: a
share well under 100% is the GPU idle inside the stage (host-bound) or lost events. The tables
list the steady steps, the work launched from the first output chunk on (the first step, which is
longer, and the step the host queued behind it are left out); a tiled case,
``variant:TASK:frames:tile``, is listed whole, every tile's first step included. Copies and
memsets are listed among the kernels under Kineto's names (``Memcpy DtoH ...``, ``Memset ...``).
``--by-op`` groups by the innermost ops around the launch (and the innermost op's input shapes)
instead. ``--gaps`` lists the stretches of 0.2 ms or more in which the GPU ran nothing, grouped by the
stage and ops of the launch that ended each one, with the host's CUDA calls during those gaps (what a
host-bound stage was waiting for). ``--memory`` also records every allocation of the measured run and lists the tensors
alive at its peak by the line of our code that made them. This is the profile that explains the
numbers of ``flashvsr-bench``; it is not a benchmark itself.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from scripts.bench import Case, case_settings
from scripts.trace_attribution import (
    STAGE_PREFIX,
    STEADY,
    attribute,
    gap_report,
    idle_gaps,
    load_trace,
    stage_report,
)
from upscaler.api import Upscaler
from upscaler.geometry import Geometry
from upscaler.report import GIB
from upscaler.settings import KV_CACHE_DTYPES, PRECISIONS, load_settings
from upscaler.timing import StageTimer
from upscaler.video.synthetic import write_test_clip

KINETO_GPU_BUFFER_MB = 2048
OUR_CODE = ("upscaler/", "kernels/")


class MemoryStageTimer(StageTimer):
    """A :class:`StageTimer` that also records, per stage, the memory held at entry and the peak inside."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.entry_bytes: dict[str, int] = defaultdict(int)
        self.peak_bytes: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        torch.cuda.reset_peak_memory_stats()
        self.entry_bytes[name] = max(self.entry_bytes[name], torch.cuda.memory_allocated())
        with super().stage(name), record_function(STAGE_PREFIX + name):
            yield
        self.peak_bytes[name] = max(self.peak_bytes[name], torch.cuda.max_memory_allocated())


def _run(upscaler: Upscaler, src: Path, case: Case, timer: StageTimer, mark_steady: bool = False) -> int:
    """Upscale ``src`` without encoding; returns frames. With ``mark_steady``, everything from the first
    output chunk on runs inside a ``record_function(STEADY)`` range."""
    width, height = case.task.output_size
    geometry = Geometry.for_target(case.task.input_size, (width, height), upscaler.settings.spatial_multiple)
    variant = upscaler.settings.variant(case.variant)
    frames = 0
    with ExitStack() as steady:
        for chunk in upscaler.upscale_frames(src, geometry, variant, timer=timer):
            if mark_steady and frames == 0:
                steady.enter_context(record_function(STEADY))
            frames += chunk.shape[0]
        torch.cuda.synchronize()
    return frames


def raise_kineto_buffer_limit(directory: Path, megabytes: int = KINETO_GPU_BUFFER_MB) -> None:
    """Point ``KINETO_CONFIG`` at a file that raises Kineto's cap on CUPTI activity buffers (128 MB by
    default; past it Kineto stops recording GPU activity for the rest of the trace), unless the caller
    set one. Call before the process's first profiler: Kineto reads the variable once."""
    if "KINETO_CONFIG" in os.environ:
        return
    path = directory / "libkineto.conf"
    path.write_text(f"ACTIVITIES_MAX_GPU_BUFFER_SIZE_MB={megabytes}\n")
    os.environ["KINETO_CONFIG"] = str(path)


def live_at_peak(snapshot: dict) -> tuple[int, dict[str, int]]:
    """Replay the allocator trace; the peak bytes and the live bytes at the peak by allocating line."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for trace in snapshot["device_traces"]:
        for event in trace:
            if event["action"] == "alloc":
                where = next((f"{f['filename'].split('/site-packages/')[-1]}:{f['line']} {f['name']}"
                              for f in event.get("frames", []) if any(c in f["filename"] for c in OUR_CODE)), "?")
                live[event["addr"]] = (event["size"], where)
                total += event["size"]
                if total > peak:
                    peak, at_peak = total, dict(live)
            elif event["action"] == "free_completed" and event["addr"] in live:
                total -= live.pop(event["addr"])[0]
    by_line: dict[str, int] = defaultdict(int)
    for size, where in at_peak.values():
        by_line[where] += size
    return peak, by_line


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="flashvsr-profile", description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Case.parse, default=Case.parse("tiny:SD24K:61"), help="variant:TASK:frames[:tile]")
    p.add_argument("--weights", default="random")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--kv-cache", choices=KV_CACHE_DTYPES, default="model")
    p.add_argument("--precision", choices=PRECISIONS, help="DiT compute precision (default: configs/upscaler.toml)")
    p.add_argument("--fp8-fast-accum", action=argparse.BooleanOptionalAction,
                   help="with --precision fp8: FP8 products without fp32 promotion (default: configs/upscaler.toml)")
    p.add_argument("--top", type=int, default=12, help="kernels to list per stage")
    p.add_argument("--memory", action="store_true", help="list the allocations alive at the memory peak")
    p.add_argument("--by-op", action="store_true", help="group kernel time by the ops that launched it (and shapes)")
    p.add_argument("--gaps", action="store_true", help="list where the GPU sat idle and which late launch ended it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("flashvsr-profile needs a CUDA device")
        return 2
    upscaler = Upscaler.load(load_settings(weights=args.weights, device="cuda", kv_cache_dtype=args.kv_cache,
                                           compile=args.compile, precision=args.precision,
                                           fp8_fast_accum=args.fp8_fast_accum))
    upscaler.settings = case_settings(upscaler.settings, args.case)
    with tempfile.TemporaryDirectory(prefix="flashvsr-profile-") as tmp:
        raise_kineto_buffer_limit(Path(tmp))  # before the warm-up: its compilation may start a profiler
        w, h = args.case.task.input_size
        src = write_test_clip(Path(tmp) / "in.mp4", w, h, args.case.frames)
        try:
            _run(upscaler, src, args.case, StageTimer(upscaler.device))
        except torch.OutOfMemoryError as exc:
            print(f"warm-up out of memory: {str(exc).splitlines()[0]}")
        gc.collect()  # an out-of-memory warm-up leaves reference cycles holding its tensors
        torch.cuda.empty_cache()
        held_before = torch.cuda.memory_allocated()
        timer = MemoryStageTimer(upscaler.device)
        prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=args.by_op)
        if args.memory:
            torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
        prof.start()
        try:
            frames = _run(upscaler, src, args.case, timer, mark_steady=not args.case.tile_size)
        except torch.OutOfMemoryError as exc:
            print(f"out of memory: {str(exc).splitlines()[0]}")
            frames = 0
        if args.memory:
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
        prof.stop()
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = load_trace(trace)
        result = attribute(events, args.by_op)
        gaps = idle_gaps(events) if args.gaps else []
    seconds = timer.seconds()
    print(f"{args.case.name}: {frames} frames, precision {upscaler.settings.precision}"
          f"{' (fast accum)' if upscaler.settings.precision == 'fp8' and upscaler.settings.fp8_fast_accum else ''}"
          f"{' (FP8 attention)' if upscaler.fp8_attention_active else ''}, "
          f"kv-cache {args.kv_cache}, compile {args.compile}")
    print(f"{'stage':12} {'ms/frame':>9} {'held GiB':>9} {'peak GiB':>9}")
    for name, s in seconds.items():
        print(f"{name:12} {1000 * s / max(frames, 1):9.2f} {timer.entry_bytes[name] / GIB:9.2f} "
              f"{timer.peak_bytes[name] / GIB:9.2f}")
    print("\n".join(stage_report(result, seconds, args.top, 160 if args.by_op else 110)))
    if args.gaps:
        print("\n".join(gap_report(gaps, args.top, steady_range=result.steady)))
    if args.memory:
        peak, by_line = live_at_peak(snapshot)
        print(f"\nmemory peak {(held_before + peak) / GIB:.2f} GiB = {held_before / GIB:.2f} GiB held before the run "
              f"(weights) + {peak / GIB:.2f} GiB; alive at the peak, by allocating line:")
        for where, size in sorted(by_line.items(), key=lambda kv: kv[1], reverse=True)[:25]:
            print(f"{size / GIB:8.2f} GiB  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
