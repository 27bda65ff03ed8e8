"""Our Triton and Gluon kernels compile for Hopper, Ada and Ampere targets (CPU only: Triton and ptxas, no
GPU); the warp-specialised Gluon kernel without register spills."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_compile_for_gpu_targets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it for this process
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "tests.kernels.gpu_compile"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 19 and all(line.startswith("ok ") for line in lines), run.stdout
    assert sum("warp-specialised attention" in line and "no spills" in line for line in lines) == 6
    assert any("FP8 keys) sm_90" in line for line in lines) and any("sm_80" in line for line in lines)
