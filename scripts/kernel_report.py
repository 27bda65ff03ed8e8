"""What the kernel benchmark scripts share: timing a kernel's candidate tiles against a reference, and the
JSON report (the GPU, torch and Triton it ran on, and the rows)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import triton
from triton.testing import do_bench


def arguments(doc: str | None, cases: dict) -> argparse.Namespace:
    """The scripts' command line: ``--cases`` (comma-separated names of ``cases``) and ``--out`` (JSON)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(cases), help="comma-separated names from: " + ", ".join(cases))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    return parser.parse_args()


def relu_frames(gen: torch.Generator, frames: int, channels: int, height: int, width: int) -> torch.Tensor:
    """ReLU'd normal bf16 frames, channels-last on the GPU (a decoder conv's input)."""
    x = torch.randn((frames, channels, height, width), generator=gen, device="cuda").relu_()
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """``|got - reference| / |reference|`` (Frobenius norms, in float32)."""
    return float((got.float() - reference).norm() / reference.norm())


def time_tiles(run: Callable[[Any], torch.Tensor], tiles: list[Any], reference: torch.Tensor, frames: int,
               before_ms: float) -> list[dict]:
    """Each tile's ms per frame (``do_bench`` of ``run(tile)`` over ``frames`` frames) and relative error,
    printed beside ``before_ms``; a tile that fails (registers, shared memory) is reported, not raised."""
    results = []
    for tile in tiles:
        try:
            error = relative_error(run(tile), reference)
            ms = do_bench(lambda: run(tile), warmup=10, rep=100) / frames
        except Exception as exc:  # a tile that does not fit registers or shared memory on this GPU
            print(f"  {tile}: failed {str(exc).splitlines()[0][:120]}", flush=True)
            results.append({"tile": asdict(tile), "error": str(exc).splitlines()[0][:300]})
            continue
        results.append({"tile": asdict(tile), "ms_per_frame": ms, "rel_error": error})
        print(f"  {tile}: {ms:.3f} ms/frame ({before_ms / ms:.2f}x) rel. error {error:.2e}", flush=True)
    return results


def save(out: Path | None, rows: list[dict]) -> None:
    """Write ``rows`` with the device and versions to ``out`` (nothing when ``out`` is None)."""
    if out is None:
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
