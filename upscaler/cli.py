"""``flashvsr-upscale``: upscale one video file from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from upscaler.api import Upscaler
from upscaler.errors import UpscalerError
from upscaler.report import Progress
from upscaler.settings import KV_CACHE_DTYPES, PRECISIONS, VARIANTS, TilingSettings, load_settings

log = logging.getLogger("flashvsr-upscale")


def _tile_size(text: str) -> int | str:
    """``--tile-size``: an integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile size {text!r} is neither an integer nor 'auto'") from None


def tiling_from_args(base: TilingSettings, tile_size: int | str | None, tile_height: int | None,
                     tile_overlap: int | None, max_vram_gib: float | None) -> TilingSettings:
    """The tiling the CLI asks for: explicit tiles, ``auto``, or (with a memory cap and no tile size) auto."""
    auto = tile_size == "auto" or (tile_size is None and bool(max_vram_gib)) or (tile_size is None and base.auto)
    size = base.tile_size if tile_size in (None, "auto") else int(tile_size)
    return TilingSettings(
        tile_size=0 if auto else size,
        tile_overlap=base.tile_overlap if tile_overlap is None else tile_overlap,
        tile_height=0 if auto else (base.tile_height if tile_height is None else tile_height),
        auto=auto,
    )


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments; defaults not given here come from configs/upscaler.toml."""
    p = argparse.ArgumentParser(prog="flashvsr-upscale", description="Upscale a video with FlashVSR.")
    p.add_argument("input", type=Path, help="input video file")
    p.add_argument("output", type=Path, help="output MP4 file")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=int, choices=(2, 4), help="upscale factor")
    size.add_argument("--width", type=int, help="exact output width (with --height)")
    p.add_argument("--height", type=int, help="exact output height (with --width)")
    p.add_argument("--variant", choices=VARIANTS, default="tiny", help="pipeline (default: tiny)")
    p.add_argument("--model-version", choices=("v1", "v1.1"), help="FlashVSR weights version")
    p.add_argument("--weights", help="model dir, 'auto', 'random' (real shapes) or 'random-small' (CPU demo)")
    p.add_argument("--vae-path", help="an existing Wan2.1_VAE.pth to reuse for the full variant")
    p.add_argument("--device", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--dtype", choices=("bf16", "fp16"), help="GPU compute dtype")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the DiT's element-wise chains")
    p.add_argument("--kv-cache", choices=KV_CACHE_DTYPES, dest="kv_cache_dtype",
                   help="K/V cache storage: the compute dtype, fp8 (half the memory), or fp8-qk (fp8, and Q.K^T in FP8)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="DiT compute precision: bf16 (default) or fp8 (opt-in; check quality with flashvsr-quality)")
    p.add_argument("--tile-size", type=_tile_size,
                   help="spatial tile side in output pixels (multiple of 128; 0 = off), or 'auto': tiles chosen from "
                        "the free GPU memory (the default with --max-vram)")
    p.add_argument("--tile-height", type=int, help="tile height when it differs from --tile-size (bands)")
    p.add_argument("--tile-overlap", type=int, help="tile overlap in output pixels")
    p.add_argument("--max-vram", type=float, metavar="GIB", dest="max_vram_gib",
                   help="use at most this many GiB of GPU memory, as a smaller card would (0 = the whole card)")
    p.add_argument("--color-fix", choices=("wavelet", "adain", "none"), help="colour correction")
    p.add_argument("--seed", type=int, help="noise seed")
    p.add_argument("--codec", choices=("h264", "hevc"), help="output codec")
    p.add_argument("--crf", type=int, help="encoder quality (lower is better)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if (args.width is None) != (args.height is None) or (args.scale is not None and args.height is not None):
        print("error: give --scale, or both --width and --height", file=sys.stderr)
        return 2
    settings = load_settings(
        weights=args.weights, model_version=args.model_version, device=args.device, dtype=args.dtype,
        color_fix=args.color_fix, seed=args.seed, vae_path=args.vae_path, kv_cache_dtype=args.kv_cache_dtype,
        compile=args.compile, precision=args.precision, max_vram_gib=args.max_vram_gib,
    )
    tiling = tiling_from_args(settings.tiling, args.tile_size, args.tile_height, args.tile_overlap, args.max_vram_gib)
    settings = settings.with_overrides(tiling=tiling).validate()
    bar = tqdm(unit="frame", dynamic_ncols=True, disable=None)

    def on_progress(p: Progress) -> None:
        bar.total = p.frames_total
        bar.n = p.frames_done
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        bar.set_postfix_str(f"{p.frames_per_second:.2f} fps, eta {eta}")

    try:
        upscaler = Upscaler.load(settings)
        report = upscaler.upscale_file(
            args.input, args.output, width=args.width, height=args.height, scale=args.scale,
            variant=args.variant, codec=args.codec, crf=args.crf, progress=on_progress,
        )
    except (UpscalerError, ValueError, FileNotFoundError, RuntimeError) as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 1
    bar.close()
    if args.report:
        args.report.write_text(json.dumps(report.as_dict(), indent=2))
    print(
        f"done: {report.frames} frames in {report.seconds['total']:.2f} s = {report.frames_per_second:.2f} frames/s, "
        f"peak GPU memory {report.peak_vram_bytes / 1024**3:.2f} GiB -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
