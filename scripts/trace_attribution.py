"""Which engine stage launched each piece of GPU work, from a PyTorch profiler chrome trace.

Every kernel, copy and memset of the trace is matched, by correlation id, with its launch (the CUDA
runtime call, or the driver call through which Triton launches kernels from Python), and given to the
innermost ``stage:<name>`` range (``record_function``) that contains the launch on the launching
thread. Work whose launch is missing, or that was launched outside every stage, goes to an explicit
``(unattributed)`` bucket. Used by ``flashvsr-profile`` (scripts/profile_engine.py).
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

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

Thread = tuple[Any, Any]
Table = dict[str, dict[str, list[float]]]
"""``{stage: {kernel or op chain: [milliseconds, calls]}}``."""


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


def in_steady(window: tuple[float, float] | None, ts: float) -> bool:
    """Whether host time ``ts`` lies in the steady-steps ``window``; everything does when there is none."""
    return window is None or window[0] <= ts <= window[1]


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
    work: list[DeviceWork] = []
    by_thread: dict[Thread, list[tuple[dict, dict]]] = defaultdict(list)
    for event in _of(complete, DEVICE_CATEGORIES):
        launch = launched.get(_correlation(event))
        if launch is None:
            work.append(DeviceWork(UNATTRIBUTED, NO_LAUNCH + event["name"], event.get("dur", 0) / 1000,
                                   in_steady(window, event["ts"])))
        else:
            by_thread[(launch["pid"], launch["tid"])].append((launch, event))
    for thread, pairs in by_thread.items():
        pairs.sort(key=lambda pair: pair[0]["ts"])
        chains = enclosing(spans.get(thread, []), [launch["ts"] for launch, _ in pairs])
        work.extend(_placed(event, chain, by_op, in_steady(window, launch["ts"])) for (launch, event), chain in zip(pairs, chains))
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


IDLE_GAP_MS = 0.2
"""Shortest stretch of an idle GPU that :func:`idle_gaps` reports."""


@dataclass(frozen=True)
class IdleGap:
    """A stretch with no kernel, copy or memset running, and the launch that ended it: its stage, the ops
    around it (or the work's name), and the host's CUDA calls on that thread during the gap (ms each)."""

    ms: float
    stage: str
    ops: str
    host_calls: tuple[tuple[str, float], ...]
    steady: bool


class _HostCalls:
    """One thread's CUDA runtime and driver calls, sorted by start, for the calls overlapping an interval."""

    def __init__(self, calls: list[dict]) -> None:
        self.calls = sorted(calls, key=lambda c: c["ts"])
        self.starts = [c["ts"] for c in self.calls]
        self.longest = max((c.get("dur", 0) for c in self.calls), default=0)

    def overlapping(self, start: float, end: float) -> Counter[str]:
        """Milliseconds of each call name inside ``[start, end]``."""
        found = Counter[str]()
        first, last = bisect_left(self.starts, start - self.longest), bisect_right(self.starts, end)
        for call in self.calls[first:last]:
            ms = max(0.0, min(_end(call), end) - max(call["ts"], start)) / 1000
            if ms > 0:
                found[call["name"]] += ms
        return found


def idle_gaps(events: list[dict], min_ms: float = IDLE_GAP_MS) -> list[IdleGap]:
    """Every stretch of at least ``min_ms`` in which the GPU ran nothing (all streams merged), with the
    launch of the work that ended it: when the GPU waits on the host, that launch came late, and the
    ops around it and the host's CUDA calls during the gap (a synchronisation, a pinned allocation)
    say why. A gap is steady as :func:`attribute` counts work: by its launch, all without a steady range."""
    complete = _complete(events)
    spans, launched = thread_spans(_of(complete, RANGE_CATEGORIES)), launches(_of(complete, LAUNCH_CATEGORIES))
    by_thread: dict[Thread, list[dict]] = defaultdict(list)
    for call in _of(complete, LAUNCH_CATEGORIES):
        by_thread[(call["pid"], call["tid"])].append(call)
    calls = {thread: _HostCalls(thread_calls) for thread, thread_calls in by_thread.items()}
    window = steady_window(complete.get("user_annotation", ()))
    gaps: list[IdleGap] = []
    busy_until: float | None = None
    for work in sorted(_of(complete, DEVICE_CATEGORIES), key=lambda e: e["ts"]):
        if busy_until is not None and work["ts"] - busy_until >= 1000 * min_ms:
            ms = (work["ts"] - busy_until) / 1000
            launch = launched.get(_correlation(work))
            if launch is None:
                gaps.append(IdleGap(ms, UNATTRIBUTED, NO_LAUNCH + work["name"], (), in_steady(window, work["ts"])))
            else:
                thread = (launch["pid"], launch["tid"])
                placed = _placed(work, enclosing(spans.get(thread, []), [launch["ts"]])[0], True, False)
                host = tuple(calls[thread].overlapping(busy_until, work["ts"]).most_common(3))
                gaps.append(IdleGap(ms, placed.stage, placed.key, host, in_steady(window, launch["ts"])))
        busy_until = _end(work) if busy_until is None else max(busy_until, _end(work))
    return gaps


def gap_report(gaps: list[IdleGap], top: int, steady_range: bool = True, width: int = 110) -> list[str]:
    """The idle stretches grouped by the stage and ops of the launch that ended them, the most idle
    time first, each with the host's CUDA calls during those gaps; with ``steady_range`` (the trace
    had one) the header also gives the steady steps' share."""
    if not gaps:
        return ["", f"GPU idle: no gap of {IDLE_GAP_MS} ms or more"]
    groups: dict[tuple[str, str], list[IdleGap]] = defaultdict(list)
    for gap in gaps:
        groups[(gap.stage, gap.ops)].append(gap)
    total = sum(g.ms for g in gaps)
    steady = f" ({sum(g.ms for g in gaps if g.steady):.1f} ms in the steady steps)" if steady_range else ""
    lines = ["", f"GPU idle: {len(gaps)} gaps of {IDLE_GAP_MS} ms or more, {total:.1f} ms in all{steady}; by the stage "
                 f"and ops of the launch that ended them (top {top}):"]
    ranked = sorted(groups.items(), key=lambda kv: sum(g.ms for g in kv[1]), reverse=True)
    for (stage, ops), members in ranked[:top]:
        host = Counter[str]()
        for gap in members:
            for name, ms in gap.host_calls:
                host[name] += ms
        calls = ", ".join(f"{name} {ms:.1f} ms" for name, ms in host.most_common(3)) or "none recorded"
        lines.append(f"{sum(g.ms for g in members):9.2f} ms {len(members):5d}  {stage}: {ops[:width]}")
        lines.append(f"{'':18}host CUDA calls in these gaps: {calls}")
    return lines
