"""Kernel tests run the Triton kernels on the CPU with the Triton interpreter.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set here,
before the test modules import :mod:`kernels.triton_sparse`; the interpreter fixes this Triton needs
come from :mod:`kernels.triton_compat`.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

from kernels import triton_compat  # noqa: E402

triton_compat.patch_interpreter()
