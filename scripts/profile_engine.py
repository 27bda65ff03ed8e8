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
instead. ``--memory`` also records every allocation of the measured run and lists the tensors
alive at its peak by the line of our code that made them. This is the profile that explains the
numbers of ``flashvsr-bench``; it is not a benchmark itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from scripts.bench import Case, case_settings
from upscaler.api import Upscaler
from upscaler.geometry import Geometry
from upscaler.report import GIB
from upscaler.settings import KV_CACHE_DTYPES, load_settings
from upscaler.timing import StageTimer
from upscaler.video.synthetic import write_test_clip

STAGE_PREFIX = "stage:"
STEADY = "steady"
"""The ``record_function`` range over the steady steps of an untiled run."""
UNATTRIBUTED = "(unattributed)"
NO_LAUNCH, NO_STAGE = "[no launch] ", "[no stage] "
"""Key prefixes in the unattributed bucket: launch not in the trace, launched outside every stage."""
DEVICE_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
LAUNCH_CATEGORIES = frozenset({"cuda_runtime", "cuda_driver"})
RANGE_CATEGORIES = frozenset({"cpu_op", "user_annotation"})
OP_CHAIN = 3
"""Ops of the launching chain named by ``--by-op`` (the innermost ones)."""
KINETO_GPU_BUFFER_MB = 2048
OUR_CODE = ("upscaler/", "kernels/")

Thread = tuple[Any, Any]
Table = dict[str, dict[str, list[float]]]
"""``{stage: {kernel or op chain: [milliseconds, calls]}}``."""


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


def load_trace(path: Path) -> list[dict]:
    """The events of a chrome trace written by ``profile.export_chrome_trace``."""
    with open(path) as f:
        return json.load(f)["traceEvents"]


@dataclass(frozen=True)
class Span:
    """A host-side range of the trace on one thread: an op or a ``record_function`` range."""

    start: float
    end: float
    name: str
    shapes: str = ""


@dataclass(frozen=True)
class DeviceWork:
    """One kernel, copy or memset: its stage, its table key, its milliseconds, whether it is steady."""

    stage: str
    key: str
    ms: float
    steady: bool


@dataclass(frozen=True)
class Attribution:
    """The run's device work by stage, and how many ranges each stage had (whole run, steady steps)."""

    work: list[DeviceWork]
    ranges: Counter[str]
    steady_ranges: Counter[str]
    steady: bool


def _complete(events: Iterable[dict]) -> dict[str, list[dict]]:
    """The complete (``"ph": "X"``) events by category."""
    found: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            found[e.get("cat", "")].append(e)
    return found


def _of(complete: dict[str, list[dict]], categories: frozenset[str]) -> Iterator[dict]:
    """The events of ``categories`` (in a fixed order) from :func:`_complete`'s buckets."""
    return (e for category in sorted(categories) for e in complete.get(category, ()))


def _correlation(event: dict) -> Any:
    return event.get("args", {}).get("correlation")


def _end(event: dict) -> float:
    return event["ts"] + event.get("dur", 0)


def thread_spans(ranges: Iterable[dict]) -> dict[Thread, list[Span]]:
    """Per host thread, its op and ``record_function`` ranges (the steady marker left out) sorted by
    start, the longer first at equal starts, so that enclosing ranges come before enclosed ones."""
    spans: dict[Thread, list[Span]] = defaultdict(list)
    for e in ranges:
        if e["name"] != STEADY:
            dims = e.get("args", {}).get("Input Dims")
            spans[(e["pid"], e["tid"])].append(Span(e["ts"], _end(e), e["name"], "" if dims is None else str(dims)))
    for thread_ranges in spans.values():
        thread_ranges.sort(key=lambda s: (s.start, -s.end))
    return dict(spans)


def launches(calls: Iterable[dict]) -> dict[Any, dict]:
    """CUDA runtime and driver calls by correlation id."""
    found: dict[Any, dict] = {}
    for e in calls:
        found.setdefault(_correlation(e), e)
    return found


def steady_window(ranges: Iterable[dict]) -> tuple[float, float] | None:
    """The host-time interval of the steady-steps range among ``ranges``, if there is one."""
    return next(((e["ts"], _end(e)) for e in ranges if e["name"] == STEADY), None)


def enclosing(spans: list[Span], times: list[float]) -> list[tuple[Span, ...]]:
    """For each of ``times`` (ascending), the ``spans`` (sorted as :func:`thread_spans` sorts them)
    whose ``[start, end]`` contains it, in start order: the outermost first."""
    chains: list[tuple[Span, ...]] = []
    open_spans: list[Span] = []
    upcoming = 0
    for t in times:
        while upcoming < len(spans) and spans[upcoming].start <= t:
            open_spans.append(spans[upcoming])
            upcoming += 1
        open_spans = [s for s in open_spans if s.end >= t]
        chains.append(tuple(open_spans))
    return chains


def _op_key(ops: tuple[Span, ...]) -> str:
    """``--by-op``'s key: the innermost ops' names, outer to inner, and the innermost op's input shapes."""
    return f"{' > '.join(op.name for op in ops[-OP_CHAIN:])} {ops[-1].shapes}".rstrip()


def _placed(event: dict, chain: tuple[Span, ...], by_op: bool, steady: bool) -> DeviceWork:
    """``event``'s work in the innermost stage of its launch's ``chain`` (the unattributed bucket if none),
    keyed by kernel name or, with ``by_op``, by the ops below that stage (the kernel name if none)."""
    stages = [i for i, span in enumerate(chain) if span.name.startswith(STAGE_PREFIX)]
    ops = chain[stages[-1] + 1:] if stages else chain
    key = _op_key(ops) if by_op and ops else event["name"]
    ms = event.get("dur", 0) / 1000
    if not stages:
        return DeviceWork(UNATTRIBUTED, NO_STAGE + key, ms, steady)
    return DeviceWork(chain[stages[-1]].name.removeprefix(STAGE_PREFIX), key, ms, steady)


def _stage_ranges(spans: dict[Thread, list[Span]], window: tuple[float, float] | None) -> Counter[str]:
    """Stage ranges per stage, all of them or those starting inside ``window``."""
    return Counter(
        span.name.removeprefix(STAGE_PREFIX)
        for thread_ranges in spans.values() for span in thread_ranges
        if span.name.startswith(STAGE_PREFIX) and (window is None or window[0] <= span.start <= window[1])
    )


def attribute(events: list[dict], by_op: bool = False) -> Attribution:
    """Give every kernel, copy and memset of a chrome trace's ``events`` to the innermost ``stage:``
    range enclosing its launch on the launching thread (matched by correlation id); work with no
    recorded launch, or launched outside every stage, goes to :data:`UNATTRIBUTED`. Work is steady
    when its launch (its own start, if the launch is missing) lies in the :data:`STEADY` range; all
    of it when the trace has no such range."""
    complete = _complete(events)
    spans, launched = thread_spans(_of(complete, RANGE_CATEGORIES)), launches(_of(complete, LAUNCH_CATEGORIES))
    window = steady_window(complete.get("user_annotation", ()))

    def steady(ts: float) -> bool:
        return window is None or window[0] <= ts <= window[1]

    work: list[DeviceWork] = []
    by_thread: dict[Thread, list[tuple[dict, dict]]] = defaultdict(list)
    for event in _of(complete, DEVICE_CATEGORIES):
        launch = launched.get(_correlation(event))
        if launch is None:
            work.append(DeviceWork(UNATTRIBUTED, NO_LAUNCH + event["name"], event.get("dur", 0) / 1000,
                                   steady(event["ts"])))
        else:
            by_thread[(launch["pid"], launch["tid"])].append((launch, event))
    for thread, pairs in by_thread.items():
        pairs.sort(key=lambda pair: pair[0]["ts"])
        chains = enclosing(spans.get(thread, []), [launch["ts"] for launch, _ in pairs])
        work.extend(_placed(event, chain, by_op, steady(launch["ts"])) for (launch, event), chain in zip(pairs, chains))
    return Attribution(work, _stage_ranges(spans, None), _stage_ranges(spans, window), window is not None)


def tabulate(work: Iterable[DeviceWork], steady_only: bool = False) -> Table:
    """Sum ``work`` (or its steady part) into ``{stage: {key: [milliseconds, calls]}}``."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for w in work:
        if w.steady or not steady_only:
            row = table[w.stage][w.key]
            row[0] += w.ms
            row[1] += 1
    return {stage: dict(rows) for stage, rows in table.items()}


def _total(rows: dict[str, list[float]]) -> float:
    return sum(ms for ms, _ in rows.values())


def _coverage(stage: str, result: Attribution, kernel_ms: float, stage_seconds: dict[str, float]) -> str:
    """A stage's whole-run kernel time against its whole-run GPU time by the stage timer."""
    if stage == UNATTRIBUTED:
        return f"kernels {kernel_ms:.1f} ms over the whole run (launch not recorded, or launched outside every stage)"
    stage_ms = 1000 * stage_seconds.get(stage, 0.0)
    share = f"{100 * kernel_ms / stage_ms:.0f}%" if stage_ms > 0 else "n/a"
    return (f"kernels {kernel_ms:.1f} ms = {share} of the stage's {stage_ms:.1f} ms GPU time "
            f"(whole run, {result.ranges[stage]} ranges)")


def _scope(stage: str, result: Attribution) -> str:
    """What a stage's table covers."""
    if not result.steady:
        return "the whole run"
    return "the steady steps" if stage == UNATTRIBUTED else f"the steady steps ({result.steady_ranges[stage]} ranges)"


def stage_report(result: Attribution, stage_seconds: dict[str, float], top: int, width: int = 110) -> list[str]:
    """The per-stage kernel tables: each stage of the timer (then any other), the unattributed bucket
    last; each a header (its whole-run kernel time against the stage timer's GPU time, the listed
    time) and its ``top`` rows (share of the listed time, ms, calls, key)."""
    whole, listed = tabulate(result.work), tabulate(result.work, steady_only=True)
    stages = list(dict.fromkeys([*stage_seconds, *sorted(whole.keys() - {UNATTRIBUTED}), UNATTRIBUTED]))
    lines: list[str] = []
    for stage in stages:
        rows = listed.get(stage, {})
        listed_ms = _total(rows)
        coverage = _coverage(stage, result, _total(whole.get(stage, {})), stage_seconds)
        lines += ["", f"{stage}: {coverage}; top {top} of {listed_ms:.1f} ms in {_scope(stage, result)}:"]
        for key, (ms, calls) in sorted(rows.items(), key=lambda kv: kv[1][0], reverse=True)[:top]:
            lines.append(f"{100 * ms / listed_ms if listed_ms else 0.0:5.1f}% {ms:9.2f} {int(calls):6d}  {key[:width]}")
    return lines


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
    p.add_argument("--top", type=int, default=12, help="kernels to list per stage")
    p.add_argument("--memory", action="store_true", help="list the allocations alive at the memory peak")
    p.add_argument("--by-op", action="store_true", help="group kernel time by the ops that launched it (and shapes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("flashvsr-profile needs a CUDA device")
        return 2
    upscaler = Upscaler.load(load_settings(weights=args.weights, device="cuda", kv_cache_dtype=args.kv_cache,
                                           compile=args.compile))
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
        result = attribute(load_trace(trace), args.by_op)
    seconds = timer.seconds()
    print(f"{args.case.name}: {frames} frames, kv-cache {args.kv_cache}, compile {args.compile}")
    print(f"{'stage':12} {'ms/frame':>9} {'held GiB':>9} {'peak GiB':>9}")
    for name, s in seconds.items():
        print(f"{name:12} {1000 * s / max(frames, 1):9.2f} {timer.entry_bytes[name] / GIB:9.2f} "
              f"{timer.peak_bytes[name] / GIB:9.2f}")
    print("\n".join(stage_report(result, seconds, args.top, 160 if args.by_op else 110)))
    if args.memory:
        peak, by_line = live_at_peak(snapshot)
        print(f"\nmemory peak {(held_before + peak) / GIB:.2f} GiB = {held_before / GIB:.2f} GiB held before the run "
              f"(weights) + {peak / GIB:.2f} GiB; alive at the peak, by allocating line:")
        for where, size in sorted(by_line.items(), key=lambda kv: kv[1], reverse=True)[:25]:
            print(f"{size / GIB:8.2f} GiB  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
