"""flashvsr-profile's attribution of GPU work to engine stages through a chrome trace's correlation ids."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from scripts.profile_engine import raise_kineto_buffer_limit
from scripts.trace_attribution import (
    NO_LAUNCH,
    NO_STAGE,
    STAGE_PREFIX,
    STEADY,
    UNATTRIBUTED,
    attribute,
    gap_report,
    idle_gaps,
    load_trace,
    stage_report,
    tabulate,
)

MAIN, DECODE = (1, 10), (1, 11)  # (pid, tid) of two host threads
GPU = (0, 7)  # device 0, stream 7


def span(thread: tuple[int, int], cat: str, name: str, ts: float, dur: float, **args: object) -> dict:
    """A complete chrome-trace event."""
    return {"ph": "X", "cat": cat, "name": name, "pid": thread[0], "tid": thread[1], "ts": ts, "dur": dur, "args": args}


def stage(thread: tuple[int, int], name: str, ts: float, dur: float) -> dict:
    return span(thread, "user_annotation", STAGE_PREFIX + name, ts, dur)


def launched(thread: tuple[int, int], cat: str, ts: float, correlation: int, kernel: str, ms: float,
             device_cat: str = "kernel") -> list[dict]:
    """A runtime or driver launch call and the device work with its correlation id (running later)."""
    call = "cudaLaunchKernel" if cat == "cuda_runtime" else "cuLaunchKernelEx"
    return [span(thread, cat, call, ts, 2, correlation=correlation, cbid=1),
            span(GPU, device_cat, kernel, ts + 5000, 1000 * ms, correlation=correlation, stream=7)]


def synthetic_trace() -> list[dict]:
    """Two host threads; on MAIN the stages lq_proj (not steady), dit, and to_uint8 with a nested
    tile_store, a copy launched between stages; on DECODE a decoder stage overlapping dit in time;
    a kernel whose launch is missing; GPU-side annotations and flow events that must be ignored."""
    return [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 10, "args": {"name": "main"}},
        stage(MAIN, "lq_proj", 0, 100),
        span(MAIN, "cpu_op", "aten::conv2d", 10, 30, **{"Input Dims": [[1, 3, 8, 8], [4, 3, 3, 3]]}),
        *launched(MAIN, "cuda_runtime", 20, 1, "conv_kernel", 5.0),
        *launched(MAIN, "cuda_driver", 50, 2, "_lq_taps_kernel", 2.0),  # Triton: no ATen op around it
        span(MAIN, "cpu_op", "aten::copy_", 150, 10),
        *launched(MAIN, "cuda_runtime", 155, 3, "Memcpy HtoD (Pinned -> Device)", 1.0, "gpu_memcpy"),
        span(MAIN, "user_annotation", STEADY, 180, 2000),
        stage(MAIN, "dit", 200, 300),
        span(MAIN, "cpu_op", "aten::linear", 205, 60),
        span(MAIN, "cpu_op", "aten::mm", 210, 50, **{"Input Dims": [[64, 32], [32, 32]]}),
        *launched(MAIN, "cuda_runtime", 220, 4, "sm90_gemm", 10.0),
        *launched(MAIN, "cuda_driver", 300, 5, "_sparse_attn_fwd", 20.0),
        *launched(MAIN, "cuda_driver", 350, 6, "_sparse_attn_fwd", 20.0),
        stage(MAIN, "to_uint8", 600, 300),
        *launched(MAIN, "cuda_runtime", 650, 7, "Memset (Device)", 0.5, "gpu_memset"),
        stage(MAIN, "tile_store", 700, 100),
        *launched(MAIN, "cuda_runtime", 750, 8, "copy_kernel", 3.0),
        stage(DECODE, "decoder", 200, 200),  # overlaps dit in time, on another thread
        span(DECODE, "cpu_op", "aten::conv2d", 240, 50),
        span(DECODE, "cpu_op", "aten::convolution", 241, 48),
        span(DECODE, "cpu_op", "aten::_convolution", 242, 46),
        span(DECODE, "cpu_op", "aten::cudnn_convolution", 243, 44, **{"Input Dims": [[1, 128, 8, 8]]}),
        *launched(DECODE, "cuda_runtime", 250, 9, "cudnn_conv3x3", 4.0),
        span(GPU, "kernel", "orphan_kernel", 90, 500, correlation=99),  # its launch was not recorded
        span(GPU, "gpu_user_annotation", STAGE_PREFIX + "dit", 5000, 40000, correlation=0),
        {"ph": "s", "cat": "ac2g", "name": "ac2g", "id": 4, "pid": 1, "tid": 10, "ts": 220},
    ]


def test_kernels_go_to_the_innermost_stage_of_their_launch_thread():
    result = attribute(synthetic_trace())
    assert tabulate(result.work) == {
        "lq_proj": {"conv_kernel": [5.0, 1], "_lq_taps_kernel": [2.0, 1]},
        "dit": {"sm90_gemm": [10.0, 1], "_sparse_attn_fwd": [40.0, 2]},
        "to_uint8": {"Memset (Device)": [0.5, 1]},
        "tile_store": {"copy_kernel": [3.0, 1]},
        "decoder": {"cudnn_conv3x3": [4.0, 1]},
        UNATTRIBUTED: {NO_STAGE + "Memcpy HtoD (Pinned -> Device)": [1.0, 1], NO_LAUNCH + "orphan_kernel": [0.5, 1]},
    }
    assert tabulate(result.work, steady_only=True) == {
        "dit": {"sm90_gemm": [10.0, 1], "_sparse_attn_fwd": [40.0, 2]},
        "to_uint8": {"Memset (Device)": [0.5, 1]},
        "tile_store": {"copy_kernel": [3.0, 1]},
        "decoder": {"cudnn_conv3x3": [4.0, 1]},
    }
    assert result.steady
    assert result.ranges == {"lq_proj": 1, "dit": 1, "to_uint8": 1, "tile_store": 1, "decoder": 1}
    assert "lq_proj" not in result.steady_ranges and result.steady_ranges["dit"] == 1


def test_by_op_keys_are_the_innermost_ops_below_the_stage_with_shapes():
    assert tabulate(attribute(synthetic_trace(), by_op=True).work) == {
        "lq_proj": {"aten::conv2d [[1, 3, 8, 8], [4, 3, 3, 3]]": [5.0, 1], "_lq_taps_kernel": [2.0, 1]},
        "dit": {"aten::linear > aten::mm [[64, 32], [32, 32]]": [10.0, 1], "_sparse_attn_fwd": [40.0, 2]},
        "to_uint8": {"Memset (Device)": [0.5, 1]},
        "tile_store": {"copy_kernel": [3.0, 1]},
        "decoder": {"aten::convolution > aten::_convolution > aten::cudnn_convolution [[1, 128, 8, 8]]": [4.0, 1]},
        UNATTRIBUTED: {NO_STAGE + "aten::copy_": [1.0, 1], NO_LAUNCH + "orphan_kernel": [0.5, 1]},
    }


def test_without_a_steady_range_everything_is_listed():
    events = [e for e in synthetic_trace() if e["name"] != STEADY]
    result = attribute(events)
    assert not result.steady
    assert tabulate(result.work, steady_only=True) == tabulate(result.work)


def test_report_compares_each_stage_with_its_gpu_time_and_prints_the_unattributed_bucket():
    lines = stage_report(attribute(synthetic_trace()), {"lq_proj": 0.014, "dit": 0.1, "color_fix": 0.002}, top=1)
    assert lines == [
        "",
        ("lq_proj: kernels 7.0 ms = 50% of the stage's 14.0 ms GPU time (whole run, 1 ranges); "
         "top 1 of 0.0 ms in the steady steps (0 ranges):"),
        "",
        ("dit: kernels 50.0 ms = 50% of the stage's 100.0 ms GPU time (whole run, 1 ranges); "
         "top 1 of 50.0 ms in the steady steps (1 ranges):"),
        " 80.0%     40.00      2  _sparse_attn_fwd",
        "",
        ("color_fix: kernels 0.0 ms = 0% of the stage's 2.0 ms GPU time (whole run, 0 ranges); "
         "top 1 of 0.0 ms in the steady steps (0 ranges):"),
        "",
        ("decoder: kernels 4.0 ms = n/a of the stage's 0.0 ms GPU time (whole run, 1 ranges); "
         "top 1 of 4.0 ms in the steady steps (1 ranges):"),
        "100.0%      4.00      1  cudnn_conv3x3",
        "",
        ("tile_store: kernels 3.0 ms = n/a of the stage's 0.0 ms GPU time (whole run, 1 ranges); "
         "top 1 of 3.0 ms in the steady steps (1 ranges):"),
        "100.0%      3.00      1  copy_kernel",
        "",
        ("to_uint8: kernels 0.5 ms = n/a of the stage's 0.0 ms GPU time (whole run, 1 ranges); "
         "top 1 of 0.5 ms in the steady steps (1 ranges):"),
        "100.0%      0.50      1  Memset (Device)",
        "",
        ("(unattributed): kernels 1.5 ms over the whole run (launch not recorded, or launched outside every stage); "
         "top 1 of 0.0 ms in the steady steps:"),
    ]


def test_idle_gaps_name_the_late_launch_and_the_host_calls_during_the_gap():
    """The GPU runs a, then idles 3 ms while the host waits in cudaStreamSynchronize and pins memory,
    then runs b (launched in lq_proj under aten::copy_); overlapping work on two streams is no gap."""
    other_stream = (0, 8)
    events = [
        span(MAIN, "user_annotation", STEADY, 0, 20000),
        stage(MAIN, "dit", 0, 1000),
        span(MAIN, "cuda_runtime", "cudaLaunchKernel", 10, 2, correlation=1),
        span(GPU, "kernel", "a", 100, 1000, correlation=1),
        span(MAIN, "cuda_runtime", "cudaLaunchKernel", 20, 2, correlation=2),
        span(other_stream, "kernel", "a2", 900, 200, correlation=2),  # overlaps a: no gap between them
        stage(MAIN, "lq_proj", 1000, 4000),
        span(MAIN, "cuda_runtime", "cudaStreamSynchronize", 1100, 2000),
        span(MAIN, "cuda_runtime", "cudaHostAlloc", 3200, 800),
        span(MAIN, "cpu_op", "aten::copy_", 4050, 20),
        span(MAIN, "cuda_runtime", "cudaMemcpyAsync", 4060, 5, correlation=3),
        span(GPU, "gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 4100, 50, correlation=3),
        span(GPU, "kernel", "b", 4200, 50, correlation=9),  # 0.05 ms after the copy: below the threshold
    ]
    gaps = idle_gaps(events)
    assert len(gaps) == 1
    gap = gaps[0]
    assert (round(gap.ms, 3), gap.stage, gap.ops, gap.steady) == (3.0, "lq_proj", "aten::copy_", True)
    assert gap.host_calls[:2] == (("cudaStreamSynchronize", 2.0), ("cudaHostAlloc", 0.8))
    lines = gap_report(gaps, top=5)
    assert "1 gaps of 0.2 ms or more, 3.0 ms in all (3.0 ms in the steady steps)" in lines[1]
    assert "lq_proj: aten::copy_" in lines[2] and "cudaStreamSynchronize 2.0 ms, cudaHostAlloc 0.8 ms" in lines[3]
    assert gap_report([], top=5)[1].startswith("GPU idle: no gap")
    whole_run = idle_gaps([e for e in events if e["name"] != STEADY])  # e.g. a tiled case: no steady range
    assert [g.steady for g in whole_run] == [True]
    assert "3.0 ms in all; by the stage" in gap_report(whole_run, top=5, steady_range=False)[1]


def test_a_real_cpu_trace_parses_and_a_launch_inside_its_stage_is_attributed(tmp_path):
    x = torch.randn(16, 16)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with record_function(STAGE_PREFIX + "x"):
            torch.relu(x @ x)
        with record_function(STEADY):
            x.add(1)
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    events = load_trace(tmp_path / "trace.json")
    result = attribute(events, by_op=True)
    assert result.work == [] and result.steady and result.ranges == {"x": 1}
    mm = next(e for e in events if e.get("cat") == "cpu_op" and e["name"] == "aten::mm")
    fake = launched((mm["pid"], mm["tid"]), "cuda_runtime", mm["ts"] + mm["dur"] / 2, 12345, "gemm", 1.0)
    (work,) = attribute(events + fake, by_op=True).work
    # mm may record nested ops (aten::resolve_conj, after some other tests ran) around the launch's time
    assert (work.stage, work.ms, work.steady) == ("x", 1.0, False)
    assert work.key.split(" [")[0].startswith("aten::matmul > aten::mm")


def test_kineto_buffer_limit_is_raised_unless_the_caller_configured_kineto(tmp_path, monkeypatch):
    monkeypatch.delenv("KINETO_CONFIG", raising=False)
    raise_kineto_buffer_limit(tmp_path, megabytes=512)
    assert Path(os.environ["KINETO_CONFIG"]).read_text() == "ACTIVITIES_MAX_GPU_BUFFER_SIZE_MB=512\n"
    monkeypatch.setenv("KINETO_CONFIG", "/etc/mine.conf")
    raise_kineto_buffer_limit(tmp_path / "elsewhere")
    assert os.environ["KINETO_CONFIG"] == "/etc/mine.conf"
