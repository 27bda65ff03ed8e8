"""Backend selection: the rule, the FLASHVSR_ATTENTION override, and the public API on the CPU."""

from __future__ import annotations

import logging

import pytest
import torch
import triton

import kernels
from kernels import dispatch
from tests.kernels.helpers import dense_block_sparse_attention


@pytest.fixture
def fresh_backend(monkeypatch):
    """Re-run the once-per-process choice under the test's environment."""
    dispatch.active_backend.cache_clear()
    yield monkeypatch
    dispatch.active_backend.cache_clear()


@pytest.mark.parametrize(
    ("forced", "cuda", "triton", "flex", "expected"),
    [
        (None, True, True, True, "triton"),
        (None, True, False, True, "flex"),
        (None, True, False, False, "sdpa"),
        (None, False, True, True, "sdpa"),
        ("FLEX", False, True, True, "flex"),
        (" sdpa ", True, True, True, "sdpa"),
        ("", True, True, True, "triton"),
    ],
)
def test_select_backend_rule(forced, cuda, triton, flex, expected):
    assert dispatch.select_backend(forced, cuda=cuda, triton=triton, flex=flex)[0] == expected


def test_select_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="FLASHVSR_ATTENTION"):
        dispatch.select_backend("cuda", cuda=True, triton=True, flex=True)


def test_active_backend_on_cpu_is_sdpa_and_logged_once(fresh_backend, caplog):
    fresh_backend.delenv(dispatch.ENV_VAR, raising=False)
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        assert kernels.active_backend() == "sdpa"
        assert kernels.active_backend() == "sdpa"
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "backend=sdpa" in caplog.records[0].getMessage()
    assert caplog.records[0].getMessage().endswith(f" torch={torch.__version__} triton={triton.__version__}")


@pytest.mark.parametrize("name", ["triton", "flex", "sdpa"])
def test_env_var_forces_backend(fresh_backend, name):
    fresh_backend.setenv(dispatch.ENV_VAR, name)
    assert kernels.active_backend() == name


def test_public_api_runs_on_cpu_tensors(fresh_backend):
    """On CPU tensors the public API takes the SDPA path, whatever backend is forced."""
    fresh_backend.setenv(dispatch.ENV_VAR, "triton")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 4 * 128, 64, generator=gen)
    k = torch.randn(1, 2, 8 * 128, 64, generator=gen)
    v = torch.randn(1, 2, 8 * 128, 64, generator=gen)
    mask = kernels.lcsa_block_mask(q, k, local_range=3, topk=6, grid=(2, 2))
    out = kernels.sparse_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), dense_block_sparse_attention(q, k, v, mask), atol=2e-5, rtol=0)
    assert dispatch.backend_for(q) == "sdpa"
