"""The 2D TMA views of the warp-specialised kernel (:func:`kernels.gluon_sparse.rows_view`) address every
element of the real layouts exactly, and layouts without such a view are refused (CPU only; the kernel
itself runs on an sm_90 GPU: scripts/bench_attention.py --check, tests/test_gpu_paths.py)."""

from __future__ import annotations

import pytest
import torch

from kernels import gluon_sparse
from kernels.gluon_sparse import rows_view


def _layouts() -> dict[str, torch.Tensor]:
    b, h, length, d = 2, 3, 256, 64
    numbered = lambda *shape: torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)  # noqa: E731
    fused_qkv = numbered(b, length, 3, h, d)
    cache = numbered(b, h, 4 * length, d)
    return {
        "contiguous (B, H, L, D)": numbered(b, h, length, d),
        "the DiT's queries: (B, L, H, D) memory": numbered(b, length, h, d).transpose(1, 2),
        "queries from a fused q/k/v projection": fused_qkv[:, :, 0].transpose(1, 2),
        "filled part of a K/V ring buffer": cache[:, :, : 3 * length],
        "one batch of a larger cache": cache[1:, :, length: 2 * length],
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_rows_view_addresses_every_element(name):
    t = _layouts()[name]
    view = rows_view(t)
    assert view is not None
    matrix = torch.as_strided(t, (view.rows, view.cols), (view.row_stride, 1))
    b, h, length, d = t.shape
    bi, hi, li, di = torch.meshgrid(*(torch.arange(n) for n in (b, h, length, d)), indexing="ij")
    rows = bi * view.per_batch + hi * view.per_head + li
    cols = hi * view.col_per_head + di
    assert int(rows.max()) < view.rows and int(cols.max()) < view.cols
    assert torch.equal(matrix[rows, cols], t)


def test_rows_view_refuses_layouts_without_one():
    base = torch.zeros(2, 3, 256, 64)
    assert rows_view(base.transpose(2, 3)) is None  # head dim not contiguous
    assert rows_view(torch.zeros(2, 256, 3, 64).permute(2, 1, 0, 3).transpose(1, 2)) is None  # batch inside a row
    interleaved = torch.zeros(2, 256, 64, 3).permute(0, 3, 1, 2)  # heads interleaved inside the head dim
    assert rows_view(interleaved) is None


def test_not_supported_off_the_gpu():
    q = torch.zeros(1, 2, 128, 64, dtype=torch.bfloat16)
    assert not gluon_sparse.supported(q, q, q)
