"""The GPU and driver, the torch/Triton/PyAV versions, and which attention kernel compiles and runs."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess

import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.reference import K_BLOCK, Q_BLOCK
from miner.doctor.result import CheckResult, DoctorContext

GPU, VERSIONS, ATTENTION = "gpu", "versions", "attention"
MIN_CAPABILITY = (8, 0)  # bf16 and the Triton attention kernel
INSTALL_FIX = "install the project's pinned environment on this machine: `bash scripts/main.sh`"


def driver_version() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (None when it is missing or fails)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.splitlines()[0].strip() if done.stdout.strip() else None


def check_gpu(context: DoctorContext) -> CheckResult:
    """A CUDA GPU of compute capability 8.0+ at the configured device (a FAIL on a CPU-only machine
    unless ``--allow-cpu``)."""
    driver = driver_version()
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        detail = f"no CUDA GPU visible (torch {torch.__version__}, {build}; NVIDIA driver {driver or 'not found'})"
        if context.allow_cpu:
            return CheckResult.skip(GPU, f"{detail}; --allow-cpu: running on the CPU (tests and demos only)")
        fix = ("the miner needs a CUDA GPU: install the NVIDIA driver (`nvidia-smi` must list the GPU)"
               + (" and a CUDA build of torch (bash scripts/main.sh with FLASHVSR_TORCH_PIP_ARGS naming the CUDA "
                  "wheel index)" if not torch.version.cuda else "")
               + "; use --allow-cpu only for tests and demos")
        return CheckResult.fail(GPU, detail, fix)
    if not context.device.startswith("cuda"):
        return CheckResult.fail(GPU, f"jobs.devices runs on {context.device!r} although a CUDA GPU is present",
                                "set jobs.devices = [] (every GPU) or to cuda:N entries (--device cuda:0)")
    device = torch.device(context.device)
    if (device.index or 0) >= torch.cuda.device_count():
        return CheckResult.fail(GPU, f"{context.device} does not exist: {torch.cuda.device_count()} GPU(s) visible",
                                "set jobs.devices to existing cuda:N entries, or [] for every GPU")
    props = torch.cuda.get_device_properties(device)
    capability = (props.major, props.minor)
    detail = (f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 1024**3:.0f} GiB) on {context.device}, "
              f"{torch.cuda.device_count()} GPU(s), NVIDIA driver {driver or 'unknown'}, CUDA {torch.version.cuda}")
    if capability < MIN_CAPABILITY:
        return CheckResult.fail(GPU, f"{detail}: compute capability {props.major}.{props.minor} is below 8.0",
                                "use an Ampere or newer GPU (A100, RTX 30xx/40xx, L40, H100, H200)")
    return CheckResult.ok(GPU, detail)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions(context: DoctorContext) -> CheckResult:
    """Python, torch, Triton and PyAV versions; Triton is required on a GPU (the fast attention kernels)."""
    return versions_result(_version("triton"), _version("av"), cuda=torch.cuda.is_available())


def versions_result(triton: str | None, av: str | None, *, cuda: bool) -> CheckResult:
    """OK with the versions; FAIL for a GPU machine without Triton, or without PyAV."""
    detail = (f"Python {platform.python_version()}, torch {torch.__version__}, Triton {triton or 'not installed'}, "
              f"PyAV {av or 'not installed'}")
    if av is None:
        return CheckResult.fail(VERSIONS, f"{detail}: the miner decodes and encodes video with PyAV", INSTALL_FIX)
    if triton is None and cuda:
        return CheckResult.fail(VERSIONS, f"{detail}: without Triton attention falls back to a slower kernel",
                                INSTALL_FIX)
    return CheckResult.ok(VERSIONS, detail)


def _inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
    """A tiny attention call: 2 heads, 256 queries, 512 keys, head dim 128, a random mask keeping the diagonal."""
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 2, n, 128, generator=generator).to(device, dtype) for n in (256, 512, 512))
    mask = torch.rand(1, 2, 256 // Q_BLOCK, 512 // K_BLOCK, generator=generator) < 0.5
    mask[..., 0] = True
    return q, k, v, mask.to(device)


def _dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA with the block mask expanded to tokens, in fp32."""
    tokens = mask.repeat_interleave(Q_BLOCK, dim=2).repeat_interleave(K_BLOCK, dim=3)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=tokens)


def _error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference).abs().max())


def check_attention(context: DoctorContext) -> CheckResult:
    """``kernels.dispatch.sparse_attention`` on the worker device against dense SDPA; on a GPU with the
    Triton backend, the Triton kernel and (sm_90) the warp-specialised Gluon kernel each on their own."""
    device = torch.device(context.device)
    q, k, v, mask = _inputs(device)
    reference = _dense_reference(q, k, v, mask)
    tolerance = 3e-2 if q.dtype == torch.bfloat16 else 1e-4
    backend = dispatch.backend_for(q)
    error = _error(dispatch.sparse_attention(q, k, v, mask), reference)
    if error > tolerance:
        return CheckResult.fail(ATTENTION, f"backend {backend}: max error {error:.3g} against SDPA (tolerance "
                                           f"{tolerance:g})", f"set FLASHVSR_ATTENTION=sdpa to run, and {INSTALL_FIX}")
    parts = [f"backend {backend} on {device}: max error {error:.2g} against SDPA"]
    if backend == "triton":
        from kernels.triton_sparse import sparse_attention_triton

        triton_error = _error(sparse_attention_triton(q, k, v, mask, warp_specialized=False), reference)
        if triton_error > tolerance:
            return CheckResult.fail(ATTENTION, f"the Triton kernel's max error is {triton_error:.3g} against SDPA",
                                    f"set FLASHVSR_ATTENTION=flex to run, and {INSTALL_FIX}")
        parts.append(f"Triton kernel max error {triton_error:.2g}")
        parts.append(_gluon_part(q, k, v, mask, reference, tolerance))
    return CheckResult.ok(ATTENTION, "; ".join(parts))


def _gluon_part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
                tolerance: float) -> str:
    """How the warp-specialised kernel fares here (it only serves sm_90; the Triton kernel serves elsewhere)."""
    try:
        from kernels import gluon_sparse
    except ImportError as exc:
        return f"warp-specialised kernel unavailable on this Triton ({exc}): the Triton kernel serves"
    if not gluon_sparse.supported(q, k, v):
        return "warp-specialised kernel: not for this GPU (sm_90 only), the Triton kernel serves"
    from kernels.triton_sparse import sparse_attention_triton

    try:
        error = _error(sparse_attention_triton(q, k, v, mask, warp_specialized=True), reference)
    except Exception as exc:
        return f"warp-specialised kernel FAILED ({type(exc).__name__}: {exc}): the Triton kernel serves, slower"
    state = "OK" if error <= tolerance else "WRONG"
    return f"warp-specialised kernel {state} (max error {error:.2g})"
