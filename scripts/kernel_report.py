"""The JSON report of a kernel benchmark script: the GPU, torch and Triton it ran on, and its rows."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import triton


def save(out: Path | None, rows: list[dict]) -> None:
    """Write ``rows`` with the device and versions to ``out`` (nothing when ``out`` is None)."""
    if out is None:
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
