"""A 3x3 convolution of a 2x nearest-upsampled image, computed on the image before upsampling.

With ``u`` the nearest 2x upsampling of ``x`` (``nn.Upsample(scale_factor=2)``), output row ``2i``
of a 3x3 conv (padding 1) of ``u`` reads ``u`` rows ``2i-1, 2i, 2i+1`` = ``x`` rows ``i-1, i, i``, and
row ``2i+1`` reads ``x`` rows ``i, i, i+1``; columns alike. So each output phase ``(a, b)`` (row and column parity) is a 2x2 conv
of ``x`` whose taps are sums of the 3x3 taps:

    phase a = 0: x row i-1 <- w row 0,        x row i   <- w rows 1 + 2
    phase a = 1: x row i   <- w rows 0 + 1,   x row i+1 <- w row 2

All four phases run as one 2x2 conv with ``4 * C_out`` output channels and padding 1 (output phase
``(a, b)`` of pixel ``(i, j)`` lands at ``(i + a, j + b)``), then :mod:`kernels.subpixel` interleaves
them. That is 16 multiply-adds per input pixel and output channel instead of 36 (2.25x fewer), no
upsampled copy of the input, and a wide (4 * C_out) GEMM: on an H200, for 8 frames of 1920x1088x128 ->
3840x2176x128 bf16, the conv took 15.0 ms where the upsample copy and 3x3 conv took 54.9 ms (PyTorch's
strided copy as the interleave took 24 ms more, hence the Triton kernel). On CUDA,
:mod:`kernels.subpixel_conv` runs the same phase taps in one kernel that stores each phase at its
upsampled pixels (no phase output, no interleave pass). Exact up to rounding: the combined taps are
summed in fp32 (fp64 for float64 weights) and stored in the weight's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.derived_weight import DerivedWeight

# _TAP_SUMS[a, p, r] = 1 where 3x3 kernel row r contributes to 2x2 tap p of output phase a.
_TAP_SUMS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(C_out, C_in, 3, 3)`` -> ``(4 * C_out, C_in, 2, 2)``, phase-major (``2a + b``), in the weight's dtype."""
    acc = torch.promote_types(weight.dtype, torch.float32)
    sums = _TAP_SUMS.to(weight.device, acc)
    phases = torch.einsum("apr,bqs,oirs->aboipq", sums, sums, weight.to(acc))
    c_out, c_in = weight.shape[:2]
    return phases.reshape(4 * c_out, c_in, 2, 2).to(weight.dtype)


class UpsampledConv(nn.Conv2d):
    """``Conv2d(C_in, C_out, 3, padding=1)`` whose ``forward`` takes the image *before* the 2x nearest
    upsampling it is applied to (checkpoint keys and shapes of a plain ``Conv2d``)."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__(n_in, n_out, 3, padding=1, bias=bias)
        self._phase_weight = DerivedWeight(self, self._layout_weight)
        self._phase_bias = DerivedWeight(self, lambda b: b.repeat(4))
        self._phase_taps = DerivedWeight(self, _pack_phase_taps)

    @staticmethod
    def _layout_weight(weight: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if weight.is_cuda else torch.contiguous_format
        return phase_weight(weight).contiguous(memory_format=fmt)

    def forward(self, x: torch.Tensor, relu: bool = False,  # type: ignore[override]
                out: torch.Tensor | None = None) -> torch.Tensor:
        """The conv of the nearest 2x upsampling of ``x (N, C_in, H, W)``, then a ReLU when ``relu``;
        written into ``out`` (any strides) when given. Half-precision channels-last CUDA frames going to a
        channels-last output take :mod:`kernels.subpixel_conv` (one kernel, no phase output) where its
        32-bit offsets reach (up to 4K output frames of 128 channels)."""
        from kernels.subpixel import interleave_phases
        from kernels.subpixel_conv import subpixel_conv, supported

        if (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and (out is None or out.stride(1) == 1)
                and supported(x, taps := self._phase_taps(self.weight), out)):
            return subpixel_conv(x, taps, self.bias, relu=relu, out=out)
        bias = None if self.bias is None else self._phase_bias(self.bias)
        phases = F.conv2d(x, self._phase_weight(self.weight), bias, padding=1)
        return interleave_phases(phases, x.shape[-2], x.shape[-1], relu=relu, out=out)


def _pack_phase_taps(weight: torch.Tensor) -> torch.Tensor:
    """The phase taps as :mod:`kernels.subpixel_conv` reads them (imported here: Triton serves the GPU path only)."""
    from kernels.subpixel_conv import pack_phase_taps

    return pack_phase_taps(phase_weight(weight))
