"""kernels.triton_compat: the Gluon API probe on this Triton and on APIs it does not accept (simulated), and
the launch options every kernel states."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
import triton
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma

import kernels
from kernels import triton_compat


def test_version_is_parsed():
    assert ".".join(map(str, triton_compat.TRITON_VERSION)) == ".".join(triton.__version__.split(".")[:2])


def test_tested_releases_express_the_gluon_kernel_with_their_own_tma_builtins():
    """3.6 has only the old TMA names; 3.8 renamed them (old names aliased); 3.9 removed the old names."""
    release = ".".join(map(str, triton_compat.TRITON_VERSION))
    if release not in triton_compat.TESTED:
        pytest.skip(f"Triton {triton.__version__} is not a tested release")
    assert triton_compat.GLUON.available
    assert triton_compat.GLUON.reason == f"Triton {triton.__version__} has the Gluon API it needs"
    if triton_compat.TRITON_VERSION >= (3, 8):
        assert triton_compat.tma_load is tma.async_load and triton_compat.tma_store is tma.async_store
    else:
        assert triton_compat.tma_load is tma.async_copy_global_to_shared
        assert triton_compat.tma_store is tma.async_copy_shared_to_global


def test_probe_refuses_an_older_warp_specialize(monkeypatch):
    def warp_specialize(default_args, default_partition, worker_args, worker_partitions, worker_num_warps,
                        worker_num_regs, _semantic=None):
        """The signature Gluon had before the list form."""

    monkeypatch.setattr(gl, "warp_specialize", warp_specialize)
    capability, load, store = triton_compat._gluon_api()
    assert not capability.available and load is None and store is None
    assert capability.reason == (
        f"Triton {triton.__version__}'s gl.warp_specialize takes (default_args, default_partition, worker_args, "
        "worker_partitions, worker_num_warps, worker_num_regs, _semantic), not the (functions_and_args, "
        "worker_num_warps, worker_num_regs) form of 3.6+")


def test_probe_refuses_a_gluon_without_tma_copies(monkeypatch):
    for name in ("async_load", "async_copy_global_to_shared"):
        monkeypatch.delattr(tma, name, raising=False)
    capability, _, _ = triton_compat._gluon_api()
    assert capability == triton_compat.Capability(False, f"Triton {triton.__version__}'s Gluon has no TMA load/store")


def test_probe_refuses_a_triton_without_gluon(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton.experimental.gluon.nvidia.hopper", None)  # import raises ImportError
    capability, _, _ = triton_compat._gluon_api()
    assert not capability.available
    assert capability.reason.startswith(f"Triton {triton.__version__} has no Gluon Hopper API (")


def _launches(tree: ast.AST) -> list[ast.Call]:
    """Every ``kernel[grid](...)`` call in a module."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)]


def test_every_kernel_launch_states_its_fp_fusion():
    """Triton 3.10 turns FMA contraction off by default (3.9 warns at every launch that leaves it unset):
    each of our launches says what it was measured with, so no release changes its arithmetic."""
    unstated = []
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        module = importlib.import_module(f"kernels.{path.stem}")
        for call in _launches(ast.parse(path.read_text())):
            spread = [ast.unparse(k.value) for k in call.keywords if k.arg is None]
            explicit = any(k.arg == "enable_fp_fusion" for k in call.keywords)
            options = getattr(module, "LAUNCH_OPTIONS", {})
            via_options = bool({"meta", "LAUNCH_OPTIONS"} & set(spread)) and "enable_fp_fusion" in options
            if not (explicit or via_options or any(s.endswith("FP_FUSION") for s in spread)):
                unstated.append(f"{path.name}:{call.lineno}")
    assert not unstated, f"kernel launches without enable_fp_fusion: {unstated}"
    assert triton_compat.FP_FUSION == {"enable_fp_fusion": True}
