"""What differs between the Triton releases our kernels run on (3.6, 3.8, 3.9), in one place.

Kernels take the names below instead of testing versions themselves:

- :data:`tma_load` / :data:`tma_store`: Gluon's TMA bulk copies. Triton 3.8 renamed
  ``tma.async_copy_global_to_shared`` / ``async_copy_shared_to_global`` to ``tma.async_load`` /
  ``async_store`` (the old names stay as aliases in 3.8) and 3.9 removed the old names. Each resolves to
  the same builtin the release itself uses, so the generated code is that release's own.
- :data:`GLUON`: whether this Triton can express the warp-specialised Gluon kernel
  (:mod:`kernels.gluon_sparse`), and why not where it cannot; the Triton kernel then serves sm_90.
- :data:`FP_FUSION`: the floating-point contraction every launch asks for. Triton 3.9 warns at a launch
  that leaves it unset, because 3.10 flips the default from on to off; our kernels were measured with it
  on (``layer_norm`` alone turns it off, by design), so each launch says so and every release compiles
  the same arithmetic.
- :func:`patch_interpreter`: fixes for ``TRITON_INTERPRET=1`` (tests run the kernels on the CPU).

Not a difference, so nothing here: ``gl.warp_specialize`` takes ``(functions_and_args,
worker_num_warps, worker_num_regs)`` on 3.6, 3.8 and 3.9, and the Triton (``tl``) kernels need no change.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

import triton

TESTED = ("3.6", "3.8", "3.9")  # the releases CI runs the kernel tests and compile checks on
TRITON_VERSION: tuple[int, int] = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])


@dataclass(frozen=True)
class Capability:
    """Whether this Triton can express a kernel; ``reason`` says why or why not (one line for logs)."""

    available: bool
    reason: str


def _gluon_api() -> tuple[Capability, Any, Any]:
    """Probe the Gluon API the warp-specialised kernel uses: (capability, TMA load, TMA store)."""
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.hopper import tma
        from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier  # noqa: F401
        from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait  # noqa: F401
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401
    except (ImportError, AttributeError) as exc:
        return Capability(False, f"Triton {triton.__version__} has no Gluon Hopper API ({exc})"), None, None
    # Renamed in 3.8 (old names kept as aliases), old names removed in 3.9 (they raise when called).
    load = getattr(tma, "async_load", None) or getattr(tma, "async_copy_global_to_shared", None)
    store = getattr(tma, "async_store", None) or getattr(tma, "async_copy_shared_to_global", None)
    if load is None or store is None:
        return Capability(False, f"Triton {triton.__version__}'s Gluon has no TMA load/store"), None, None
    params = list(inspect.signature(gl.warp_specialize).parameters)
    if params[:3] != ["functions_and_args", "worker_num_warps", "worker_num_regs"]:
        reason = (f"Triton {triton.__version__}'s gl.warp_specialize takes ({', '.join(params)}), not the "
                  "(functions_and_args, worker_num_warps, worker_num_regs) form of 3.6+")
        return Capability(False, reason), None, None
    return Capability(True, f"Triton {triton.__version__} has the Gluon API it needs"), load, store


GLUON, tma_load, tma_store = _gluon_api()

FP_FUSION: dict[str, bool] = {"enable_fp_fusion": True}  # launch option: FMA contraction, as measured


def patch_interpreter() -> None:
    """Make Triton's CPU interpreter (``TRITON_INTERPRET=1``) run our kernels on this release.

    Triton 3.6's interpreter turns a scalar into an int with ``int(ndarray)``, which NumPy >= 2.4 rejects
    for 1-element arrays (e.g. ``range(0, n)`` over a runtime ``n``); 3.8 fixed it (``.squeeze()``).
    Where the fix is missing, convert with ``.item()``. Every release: :func:`_patch_e4m3_rounding`.
    Call before launching interpreted kernels."""
    import triton.runtime.interpreter as interpreter

    _patch_e4m3_rounding(interpreter)
    if TRITON_VERSION >= (3, 8):
        return

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patch_lang_tensor


def _patch_e4m3_rounding(interpreter: Any) -> None:
    """The interpreter's fp32 -> e4m3 (``fp8e4nv``) cast rounds half up and drops the carry when a value
    rounds up into the next binade (31.6 becomes 16, not 32), where the GPU's ``cvt.rn.satfinite`` rounds
    to nearest even; route that one cast through PyTorch's e4m3 rounding (the same as the GPU's for
    values in range, which the kernels clamp to)."""
    import numpy as np
    import torch

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_fp_to_fp, "_e4m3_fixed", False):
        return
    original = builder.create_fp_to_fp

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if src.dtype.scalar == triton.language.float32 and dst_type.scalar == triton.language.float8e4nv:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).to(torch.float8_e4m3fn)
            return interpreter.TensorHandle(rounded.view(torch.uint8).numpy(), dst_type.scalar)
        return original(self, src, dst_type, rounding_mode)

    create_fp_to_fp._e4m3_fixed = True
    builder.create_fp_to_fp = create_fp_to_fp
