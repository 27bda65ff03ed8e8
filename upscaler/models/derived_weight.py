"""A cache for tensors derived from a module's parameters (re-laid-out or padded weights)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DerivedWeight:
    """``DerivedWeight(owner, make)(*params)`` returns ``make(*params)``, rebuilt only when a
    parameter changes: new storage (``.to()``, ``assign=True`` loading), a dtype change, an in-place
    update that bumps the version counter, or ``owner.load_state_dict`` (which also covers inference
    tensors: they copy in place without a version counter).

    Lets a module keep the checkpoint's parameter shapes and key names while running on a layout
    that suits the GPU better."""

    def __init__(self, owner: nn.Module, make: Callable[..., torch.Tensor]) -> None:
        self._make = make
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None
        owner.register_load_state_dict_post_hook(lambda module, incompatible: self.reset())

    def reset(self) -> None:
        """Forget the derived tensor (rebuilt on the next call)."""
        self._key = self._value = None

    def __call__(self, *params: torch.Tensor) -> torch.Tensor:
        key = tuple((p.data_ptr(), p.dtype, 0 if p.is_inference() else p._version) for p in params)
        if self._value is None or key != self._key:
            with torch.no_grad():
                self._value = self._make(*(p.detach() for p in params))
            self._key = key
        return self._value
