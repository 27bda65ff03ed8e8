"""Kernel tests run the Triton kernels on the CPU with the Triton interpreter.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set here,
before the test modules import :mod:`kernels.triton_sparse`.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import triton.runtime.interpreter as _interpreter  # noqa: E402

_original_patch_lang_tensor = _interpreter._patch_lang_tensor


def _patch_lang_tensor(tensor, scope) -> None:
    """Triton 3.6's interpreter turns scalars into ints with ``int(ndarray)``, which NumPy >= 2.4 rejects
    for 1-element arrays (e.g. ``range(0, n)`` over a runtime ``n``); convert with ``.item()`` instead."""
    _original_patch_lang_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))


_interpreter._patch_lang_tensor = _patch_lang_tensor
