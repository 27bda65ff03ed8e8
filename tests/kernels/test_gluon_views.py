"""The warp-specialised kernel's host side on the CPU: its 2D TMA views
(:func:`kernels.gluon_sparse.rows_view`) address every element of the real layouts exactly and refuse
the others; the switch and the fall-back to the Triton kernel when it fails on first use. The kernel
itself runs on an sm_90 GPU: scripts/bench_attention.py --check, tests/test_gpu_paths.py."""

from __future__ import annotations

import logging

import pytest
import torch
import triton

from kernels import gluon_sparse, triton_compat, triton_sparse
from kernels.gluon_sparse import rows_view
from tests.kernels.helpers import dense_block_sparse_attention


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


@pytest.mark.parametrize("name", list(_layouts()))
def test_this_tritons_tensor_descriptors_take_the_views(name):
    """The kernel's host side on this Triton release: its TensorDescriptor accepts each 2D view."""
    t = _layouts()[name]
    view = rows_view(t)
    desc = gluon_sparse.descriptor(t, view, [64, t.shape[-1]])
    assert (list(desc.shape), list(desc.strides), list(desc.block_shape)) == (
        [view.rows, view.cols], [view.row_stride, 1], [64, t.shape[-1]])
    assert desc.layout.element_bitwidth == 32 and desc.base is t


def test_rows_view_refuses_layouts_without_one():
    base = torch.zeros(2, 3, 256, 64)
    assert rows_view(base.transpose(2, 3)) is None  # head dim not contiguous
    assert rows_view(torch.zeros(2, 256, 3, 64).permute(2, 1, 0, 3).transpose(1, 2)) is None  # batch inside a row
    interleaved = torch.zeros(2, 256, 64, 3).permute(0, 3, 1, 2)  # heads interleaved inside the head dim
    assert rows_view(interleaved) is None


def test_not_supported_off_the_gpu():
    q = torch.zeros(1, 2, 128, 64, dtype=torch.bfloat16)
    assert not gluon_sparse.supported(q, q, q)


@pytest.fixture
def gluon_state(monkeypatch):
    """A fresh decision on the Gluon kernel and a fresh first-use record, restored afterwards."""
    triton_sparse._gluon_kernels.cache_clear()
    monkeypatch.setattr(triton_sparse, "_GLUON", triton_sparse._GluonStatus())
    yield monkeypatch
    triton_sparse._gluon_kernels.cache_clear()


def _inputs():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g, dtype=torch.float16) for n in (256, 256, 256))
    mask = torch.rand(1, 2, 2, 4, generator=g) < 0.5
    return q, k, v, mask


def test_switch_is_read_once_and_logged(gluon_state, caplog):
    gluon_state.setenv(triton_sparse.WARP_SPECIALIZED_ENV, "0")
    with caplog.at_level(logging.INFO, logger="kernels.triton_sparse"):
        assert triton_sparse._gluon_kernels() is None
        assert triton_sparse._gluon_kernels() is None
    assert [r.message for r in caplog.records].count(
        f"warp-specialised attention kernel for sm_90: enabled=False triton={triton.__version__} "
        "reason='FLASHVSR_WARP_SPECIALIZED=0' instead='the Triton kernel (TMA loads)'") == 1
    triton_sparse._gluon_kernels.cache_clear()
    gluon_state.setenv(triton_sparse.WARP_SPECIALIZED_ENV, "yes")
    with pytest.raises(ValueError, match="expected 0 or 1"):
        triton_sparse._gluon_kernels()


def test_failure_on_first_use_falls_back_to_the_triton_kernel(gluon_state, caplog):
    """A Gluon kernel that cannot run here (compile or launch error) is switched off once, logged, and
    the call is answered by the Triton kernel (under the interpreter here); forced calls still raise."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("ptxas fatal: unsupported target\nmore detail")

    gluon_state.setattr(gluon_sparse, "supported", lambda q, k, v: True)
    gluon_state.setattr(gluon_sparse, "sparse_attention_gluon", broken)
    q, k, v, mask = _inputs()
    expected = triton_sparse.sparse_attention_triton(q, k, v, mask, warp_specialized=False)
    with caplog.at_level(logging.ERROR, logger="kernels.triton_sparse"):
        first = triton_sparse.sparse_attention_triton(q, k, v, mask)
        second = triton_sparse.sparse_attention_triton(q, k, v, mask)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(calls) == 1, "tried once, then switched off"
    assert triton_sparse._GLUON.failure == "RuntimeError: ptxas fatal: unsupported target"
    assert sum("failed on first use" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="ptxas"):
        triton_sparse.sparse_attention_triton(q, k, v, mask, warp_specialized=True)


def test_a_triton_that_cannot_express_it_logs_one_warning_and_the_triton_kernel_answers(gluon_state, caplog):
    """Where :data:`kernels.triton_compat.GLUON` says this Triton cannot express the kernel, the first
    call logs one warning (the Triton release, why, the fix, what runs instead), the Gluon module is never
    used, and every call, including an sm_90-shaped one, is answered by the Triton kernel."""
    reason = "Triton 9.9's gl.warp_specialize takes (default_args, default_partition)"
    gluon_state.setattr(triton_compat, "GLUON", triton_compat.Capability(False, reason))
    gluon_state.setattr(gluon_sparse, "supported", lambda q, k, v: True)  # as on an sm_90 GPU
    gluon_state.setattr(gluon_sparse, "sparse_attention_gluon", lambda *a, **k: pytest.fail("Gluon kernel called"))
    q, k, v, mask = _inputs()
    expected = dense_block_sparse_attention(q, k, v, mask)
    with caplog.at_level(logging.INFO, logger="kernels.triton_sparse"):
        outs = [triton_sparse.sparse_attention_triton(q, k, v, mask) for _ in range(2)]
    lines = [r for r in caplog.records if "warp-specialised" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].message == (
        f"warp-specialised attention kernel for sm_90: enabled=False triton={triton.__version__} "
        f"reason=\"{reason}; to get it back, install a Triton it is tested on (3.6, 3.8, 3.9)\" "
        "instead='the Triton kernel (TMA loads)'")
    for out in outs:
        torch.testing.assert_close(out.double(), expected, atol=3e-3, rtol=0)
    with pytest.raises(ValueError, match="warp-specialised kernel is off in this process: Triton 9.9's"):
        triton_sparse.sparse_attention_triton(q, k, v, mask, warp_specialized=True)


def test_failure_after_a_successful_launch_is_raised(gluon_state):
    """Once the kernel has run in this process, a later error is a real fault, not an unsupported setup."""
    gluon_state.setattr(gluon_sparse, "supported", lambda q, k, v: True)
    gluon_state.setattr(gluon_sparse, "sparse_attention_gluon", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    triton_sparse._GLUON.proven = True
    q, k, v, mask = _inputs()
    with pytest.raises(RuntimeError, match="bad"):
        triton_sparse.sparse_attention_triton(q, k, v, mask)


def test_layouts_the_kernel_addresses():
    """The DiT's layouts fit; queries that are not dense (their output would get other strides) and
    K/V with different row arithmetic do not, and go to the Triton kernel."""
    layouts = _layouts()
    queries, cache = layouts["the DiT's queries: (B, L, H, D) memory"], layouts["filled part of a K/V ring buffer"]
    keys = cache[:, :, :256].contiguous()
    assert gluon_sparse.dense(queries) and gluon_sparse.dense(layouts["contiguous (B, H, L, D)"])
    assert gluon_sparse.layouts_fit(queries, keys, keys.clone())
    assert gluon_sparse.layouts_fit(queries, cache[:, :, :256], cache[:, :, 256:512])
    fused = layouts["queries from a fused q/k/v projection"]
    assert not gluon_sparse.dense(fused) and not gluon_sparse.layouts_fit(fused, keys, keys)
    assert torch.empty_like(fused).stride() != fused.stride()
    assert not gluon_sparse.layouts_fit(queries, cache[:, :, :256], keys)  # k's heads 1024 rows apart, v's 256


def test_descriptors_of_the_fp8_cache_take_e4m3_boxes():
    """The FP8 kernel's keys ``(64, D)`` and transposed values ``(D, 64)`` boxes over the filled part of a
    ring buffer: e4m3 descriptors of the views (8-bit elements, the box as given)."""
    ring_k = torch.empty(1, 3, 5 * 256, 128, dtype=torch.float8_e4m3fn)
    ring_vt = torch.empty(1, 3, 128, 5 * 256, dtype=torch.float8_e4m3fn)
    for t, box in ((ring_k[:, :, : 4 * 256], [64, 128]), (ring_vt[:, :, :, : 4 * 256], [128, 64])):
        view = rows_view(t)
        desc = gluon_sparse.descriptor(t, view, box)
        assert list(desc.block_shape) == box and desc.layout.element_bitwidth == 8
        assert (list(desc.shape), list(desc.strides)) == ([view.rows, view.cols], [view.row_stride, 1])
    assert rows_view(ring_vt[:, :, :, : 4 * 256]).per_head == 128  # heads are row groups of D rows
