"""Our Triton and Gluon kernels compile for Hopper, Ada and Ampere targets (CPU only: Triton and ptxas, no
GPU); the warp-specialised Gluon kernels (bf16/fp16 and FP8) without register spills; FP8 keys refused below
sm_89."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kernels import triton_compat

ROOT = Path(__file__).resolve().parents[2]
OTHER_KERNELS = ("compact rows", "sub-pixel interleave", "sub-pixel conv (3x3 of the 2x upsampled image)",
                 "decoder output conv (3x3 to the image channels)", "MemBlock frame pairs", "LQ time taps",
                 "LQ conv epilogue (bias + channel norm + SiLU)", "frames to uint8 pixels", "q/k RMSNorm + RoPE",
                 "residual add + layer norm (modulated)", "residual add + layer norm (affine)")
FP8_KERNELS = ("LQ time taps to e4m3", "LQ FP8 conv (implicit GEMM)", "FFN up FP8 product + GELU + 1x128 e4m3",
               "FFN up FP8 product + GELU + 1x128 e4m3 (persistent)",
               "row quantise to e4m3",
               "row quantise to e4m3 + GELU", "residual add + layer norm to e4m3 (modulated)",
               "residual add + layer norm to e4m3 (affine)")  # sm_89 and sm_90 only (no e4m3 before)


def test_kernels_compile_for_gpu_targets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it for this process
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "tests.kernels.gpu_compile"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    print(f"Triton {triton_compat.TRITON_VERSION[0]}.{triton_compat.TRITON_VERSION[1]}:\n{run.stdout}")  # the CI log's record
    lines = run.stdout.splitlines()
    gluon = [line for line in lines if "warp-specialised attention" in line]
    if triton_compat.GLUON.available:
        assert len(gluon) == 8 and all(line.startswith("ok ") and "no spills" in line for line in gluon), run.stdout
        assert sum("FP8 warp-specialised" in line for line in gluon) == 2, run.stdout
    else:
        reason = triton_compat.GLUON.reason
        assert gluon == [f"skip warp-specialised attention (Gluon) sm_90: not expressible: {reason}"]
    others = [line for line in lines if line not in gluon]
    assert len(others) == 7 + 3 * len(OTHER_KERNELS) + 2 * len(FP8_KERNELS), run.stdout
    assert all(line.startswith("ok ") for line in others), run.stdout
    for arch in (90, 89, 80):
        for name in OTHER_KERNELS + (FP8_KERNELS if arch >= 89 else ()):
            assert sum(line.startswith(f"ok {name} sm_{arch}:") for line in others) == 1, (name, arch, run.stdout)
    for variant in ("TMA, bf16 keys) sm_90", "TMA, FP8 keys) sm_90", "pointers, bf16 keys) sm_90",
                    "pointers, bf16 keys) sm_89", "pointers, FP8 keys) sm_89", "pointers, bf16 keys) sm_80"):
        assert sum(f"sparse attention ({variant}:" in line and "B cubin" in line for line in others) == 1, variant
    assert "ok sparse attention (pointers, FP8 keys) sm_80: refused as expected (no e4m3 before sm_89)" in others


def test_emulated_bf16_multiply_and_add_are_not_counted_as_contractions():
    """Before sm_90 Triton writes a bf16 product as ``fma x, y, -0.0`` and a sum as ``fma x, 1.0, y``."""
    from tests.kernels.gpu_compile import _contracted_bf16_fmas

    ptx = """
    mov.b16 	%rs9, 0x8000;
    mov.b16 	%rs8, 0x3F80;
    fma.rn.bf16 	%rs10, %rs1, %rs2, %rs9;
    fma.rn.bf16 	%rs11, %rs10, %rs8, %rs3;
    fma.rn.bf16 	%rs12, %rs8, %rs10, %rs3;
    fma.rn.bf16 	%rs13, %rs1, %rs2, %rs3;
    """
    assert _contracted_bf16_fmas(ptx) == 1


def test_a_triton_that_cannot_express_the_gluon_kernel_skips_it_with_the_reason(monkeypatch, capsys):
    from tests.kernels import gpu_compile

    monkeypatch.setattr(triton_compat, "GLUON", triton_compat.Capability(False, "Triton 9.9 has no Gluon Hopper API"))
    assert gpu_compile._gluon_variants() == []
    assert capsys.readouterr().out == (
        "skip warp-specialised attention (Gluon) sm_90: not expressible: Triton 9.9 has no Gluon Hopper API\n")
