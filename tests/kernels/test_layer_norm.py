"""The DiT's fused residual add + layer norm kernel (Triton interpreter) against the eager expressions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.layer_norm import add_layer_norm


def _inputs(rows: int, dim: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, rows, dim, generator=g) * 2 + 0.5).to(dtype)
    update = torch.randn(1, rows, dim, generator=g).to(dtype)
    gate, scale, shift = ((torch.randn(1, 1, dim, generator=g) * 0.5 + offset).to(dtype) for offset in (0.0, 1.0, 0.0))
    return x, update, gate, scale, shift


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 4e-3)])
@pytest.mark.parametrize("rows,dim", [(5, 48), (2, 96), (1, 64)])
@pytest.mark.parametrize("mode", ["norm", "add", "gated-add", "gated-add-affine"])
def test_kernel_matches_the_eager_expressions(rows, dim, mode, dtype, tol) -> None:
    x, update, gate, scale, shift = _inputs(rows, dim, dtype, seed=rows + dim)
    use_update = mode != "norm"
    use_gate = mode.startswith("gated")
    affine = mode.endswith("affine")
    expected_x = x
    if use_update:
        expected_x = x + gate * update if use_gate else x + update
    if affine:
        expected_y = F.layer_norm(expected_x, (dim,), scale.flatten(), shift.flatten(), 1e-6)
    else:
        expected_y = F.layer_norm(expected_x, (dim,), eps=1e-6) * scale + shift
    got_x, got_y = add_layer_norm(x, scale.flatten() if affine else scale, shift.flatten() if affine else shift, 1e-6,
                                  update=update if use_update else None, gate=gate if use_gate else None,
                                  affine=affine)
    assert got_x.dtype == got_y.dtype == dtype and got_y.shape == x.shape
    if not use_update:
        assert got_x is x
    torch.testing.assert_close(got_x, expected_x, rtol=tol, atol=tol)
    torch.testing.assert_close(got_y, expected_y, rtol=tol, atol=tol)


def test_kernel_rejects_what_it_cannot_run() -> None:
    x, update, gate, scale, shift = _inputs(3, 32, torch.float32, seed=0)
    with pytest.raises(ValueError, match="contiguous"):
        add_layer_norm(x.transpose(1, 2), scale, shift, 1e-6)
    with pytest.raises(ValueError, match="does not match"):
        add_layer_norm(x, scale, shift, 1e-6, update=update[:, :2])
    with pytest.raises(ValueError, match="needs an update"):
        add_layer_norm(x, scale, shift, 1e-6, gate=gate)
    with pytest.raises(ValueError, match="vector of 32"):
        add_layer_norm(x, scale[..., :16], shift, 1e-6)
