"""A cache for tensors derived from a module's parameters (re-laid-out or padded weights)."""

from __future__ import annotations

from collections.abc import Callable

import torch


class DerivedWeight:
    """``DerivedWeight(make)(*params)`` returns ``make(*params)``, rebuilt only when a parameter
    changes (new storage, an in-place update such as loading a state dict, or a dtype change).

    Lets a module keep the checkpoint's parameter shapes and key names while running on a layout
    that suits the GPU better."""

    def __init__(self, make: Callable[..., torch.Tensor]) -> None:
        self._make = make
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    def __call__(self, *params: torch.Tensor) -> torch.Tensor:
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if self._value is None or key != self._key:
            with torch.no_grad():
                self._value = self._make(*(p.detach() for p in params))
            self._key = key
        return self._value
