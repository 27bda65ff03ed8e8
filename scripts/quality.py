"""``flashvsr-quality``: does a setting (FP8 by default) keep your clips above Vidaio's VMAF threshold?

    flashvsr-quality clip1.mp4 clip2.mp4 --reference clip1_hr.mp4 --reference clip2_hr.mp4 --json q.json
    flashvsr-quality clip.mp4 --scale 4 --b precision=fp8,kv_cache_dtype=fp8,fp8_layers=self_qkv+ffn_up

Upscales every clip with two settings of the upscaler (``--a``, default ``precision=bf16,kv_cache_dtype=fp8``;
``--b``, default ``precision=fp8,kv_cache_dtype=fp8``: both over the miner's FP8 K/V cache, so the second
has FP8 attention where the GPU runs it) and your weights (``--weights``, as configs/upscaler.toml), encoded as the
miner encodes (HEVC). With a high-resolution reference per clip (``--reference``, in clip order; the
clip is the reference downscaled 2x or 4x, as a Vidaio validator makes its input), each output is
scored as a validator scores it (:func:`miner.mock_validator.scoring.score_clip`: hard checks, then
VMAF and PSNR of sampled luma frames against the reference); always, the second output is compared
with the first (VMAF and PSNR, the first as reference). Prints a table and a plain verdict per clip;
``--json`` writes the full report. Exit status 0 when every clip with a reference stays above the
threshold with the second setting, 1 when one does not, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from miner.mock_validator import metrics
from miner.mock_validator.scoring import Reference, score_clip
from miner.mock_validator.scoring import _collect, _luma_metrics, _sample_indices  # the scoring's own sampling
from miner.mock_validator.settings import Geometry
from miner.mock_validator.settings import load_settings as load_validator_settings
from miner.mock_validator.videoio import probe
from upscaler.api import Upscaler
from upscaler.settings import UpscalerSettings, load_settings

log = logging.getLogger("flashvsr-quality")

SCORED_SCALES = (2, 4)  # Vidaio's upscaling tasks (the validator's size limits are per scale)
MINER_CACHE = "kv_cache_dtype=fp8"  # both default settings use the miner's K/V cache (its FP8 attention reads it)
MAX_SIZE_MB = 2048  # the output-size cap is a round setting, not a quality question: effectively off here


def _boolean(value: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off); anything else is an error, not False."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true or false)")


_CONVERTERS: dict[str, Callable[[str], Any]] = {  # UpscalerSettings field type -> parser of a setting's value
    "str": str, "str | None": str, "int": int, "float": float, "bool": _boolean,
    "tuple[str, ...]": lambda value: tuple(filter(None, value.split("+"))),
}


@dataclass(frozen=True)
class Setting:
    """One named set of upscaler overrides, e.g. ``precision=fp8,fp8_layers=self_qkv+ffn_up``."""

    text: str
    overrides: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``key=value`` pairs separated by commas; tuple values (``fp8_layers``) joined with ``+``."""
        types = {f.name: f.type for f in fields(UpscalerSettings)}
        overrides: dict[str, Any] = {}
        for pair in filter(None, text.split(",")):
            key, sep, value = pair.partition("=")
            convert = _CONVERTERS.get(types.get(key, ""))
            if not sep or convert is None:
                raise argparse.ArgumentTypeError(
                    f"setting {pair!r}: expected key=value with a top-level upscaler key (precision, fp8_layers, "
                    "kv_cache_dtype, dtype, compile, color_fix, seed, max_vram_gib, ...)")
            try:
                overrides[key] = convert(value)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"setting {pair!r}: {exc}") from None
        return cls(text, overrides)


def compare_outputs(first: Path, second: Path, validator: dict[str, Any], seed: int) -> dict[str, float | None]:
    """VMAF and PSNR of ``second`` against ``first``, on the frames and luma the validator's scoring samples."""
    frames = min(probe(first).frames, probe(second).frames)
    indices = set(_sample_indices(frames, int(validator["metrics"]["sample_frames"]), seed))
    (first_y, _), (second_y, _) = _collect(first, indices, 0), _collect(second, indices, 0)
    psnr, _, vmaf = _luma_metrics(first_y, second_y, validator["metrics"])
    return {"vmaf": metrics.finite_or_none(vmaf), "psnr": metrics.finite_or_none(psnr)}


def _reference(clip: Path, reference: Path) -> Reference:
    """The validator's view of a clip pair; the reference must be 2x or 4x the clip."""
    clip_info, ref_info = probe(clip), probe(reference)
    scale = ref_info.width // clip_info.width
    if scale not in SCORED_SCALES or (clip_info.width * scale, clip_info.height * scale) != (ref_info.width, ref_info.height):
        raise ValueError(f"{reference.name} ({ref_info.width}x{ref_info.height}) is not 2x or 4x {clip.name} "
                         f"({clip_info.width}x{clip_info.height}): give the high-resolution clip the input was made from")
    return Reference(reference, clip, ref_info, Geometry("quality", ref_info.width, ref_info.height, scale))


def upscale_all(settings: UpscalerSettings, clips: list[Path], sizes: list[tuple[int, int]], out_dir: Path,
                label: str, variant: str, crf: int) -> list[dict[str, Any]]:
    """Upscale every clip with one setting (models loaded once, released after); the outputs and reports."""
    upscaler = Upscaler.load(settings)
    results = []
    try:
        for clip, (width, height) in zip(clips, sizes):
            out = out_dir / f"{clip.stem}.{label}.mp4"
            report = upscaler.upscale_file(clip, out, width=width, height=height, variant=variant, codec="hevc",
                                           crf=crf)
            results.append({"output": str(out), "fps": round(report.frames_per_second, 2),
                            "peak_vram_gib": round(report.peak_vram_bytes / 1024**3, 2)})
    finally:
        del upscaler
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both settings on every clip, scored; the report (also what ``--json`` writes)."""
    clips = [Path(c) for c in args.clips]
    references = [Path(r) for r in args.references or []]
    if references and len(references) != len(clips):
        raise ValueError(f"{len(references)} references for {len(clips)} clips: give one per clip, in order")
    pairs = [_reference(c, r) for c, r in zip(clips, references)]
    sizes = ([(p.geometry.out_width, p.geometry.out_height) for p in pairs] if pairs else
             [(probe(c).width * args.scale, probe(c).height * args.scale) for c in clips])
    validator = load_validator_settings()
    threshold = float(validator["checks"]["vmaf_threshold"])
    seed = args.seed
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="flashvsr-quality-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {label: load_settings(args.config, weights=args.weights, device=args.device, **s.overrides)
                for label, s in (("a", args.a), ("b", args.b))}
    runs = {label: upscale_all(s, clips, sizes, out_dir, label, args.variant, args.crf) for label, s in settings.items()}
    report_clips = []
    for i, clip in enumerate(clips):
        entry: dict[str, Any] = {"clip": str(clip), "reference": str(references[i]) if references else None}
        for label in ("a", "b"):
            entry[label] = dict(runs[label][i])
            if pairs:
                score = score_clip(Path(runs[label][i]["output"]), pairs[i], validator, max_size_mb=MAX_SIZE_MB,
                                   seed=seed)
                entry[label].update(vmaf=metrics.finite_or_none(score.vmaf), psnr=metrics.finite_or_none(score.psnr),
                                    passes=score.ok, failed=score.failed())
        entry["b_vs_a"] = compare_outputs(Path(runs["a"][i]["output"]), Path(runs["b"][i]["output"]), validator, seed)
        entry["verdict"] = verdict(entry, threshold)
        report_clips.append(entry)
    return {"settings": {"a": args.a.text, "b": args.b.text}, "weights": args.weights or "configs/upscaler.toml",
            "vmaf_threshold": threshold, "sample_frames": int(validator["metrics"]["sample_frames"]), "out_dir": str(out_dir), "clips": report_clips,
            "b_keeps_all_above_threshold": all(c["b"].get("vmaf") is not None and c["b"]["vmaf"] >= threshold
                                               for c in report_clips) if pairs else None}


def verdict(entry: dict[str, Any], threshold: float) -> str:
    """One plain sentence about clip ``entry``."""
    between = entry["b_vs_a"]
    against = f"b against a: VMAF {_fmt(between['vmaf'])}, PSNR {_fmt(between['psnr'])} dB"
    if entry["reference"] is None:
        return f"no reference, so no VMAF threshold check; {against}"
    a, b = entry["a"], entry["b"]
    if b.get("vmaf") is None:
        return f"VMAF not computed (install the score extra: pip install -e .[score]); {against}"
    figures = f"(a {_fmt(a['vmaf'])}, b {_fmt(b['vmaf'])}, change {b['vmaf'] - a['vmaf']:+.2f}); {against}"
    if b["vmaf"] >= threshold:
        return f"b keeps this clip above the VMAF threshold {threshold:g} {figures}"
    if a.get("vmaf") is not None and a["vmaf"] < threshold:
        return (f"neither a nor b reaches the VMAF threshold {threshold:g} on this clip: the weights or the clip, "
                f"not the setting, fail it {figures}")
    return f"b does NOT keep this clip above the VMAF threshold {threshold:g}, a does {figures}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(report: dict[str, Any]) -> str:
    """The human table: one row per clip, then the verdicts."""
    head = (f"{'clip':24} {'VMAF a':>7} {'VMAF b':>7} {'PSNR a':>7} {'PSNR b':>7} {'b~a VMAF':>8} {'b~a PSNR':>8} "
            f"{'fps a':>6} {'fps b':>6}")
    lines = [f"a = {report['settings']['a']}   b = {report['settings']['b']}   VMAF threshold {report['vmaf_threshold']:g}",
             head, "-" * len(head)]
    for c in report["clips"]:
        a, b, ba = c["a"], c["b"], c["b_vs_a"]
        lines.append(f"{Path(c['clip']).name[:24]:24} {_fmt(a.get('vmaf')):>7} {_fmt(b.get('vmaf')):>7} "
                     f"{_fmt(a.get('psnr')):>7} {_fmt(b.get('psnr')):>7} {_fmt(ba['vmaf']):>8} {_fmt(ba['psnr']):>8} "
                     f"{a['fps']:6.2f} {b['fps']:6.2f}")
    lines += [f"{Path(c['clip']).name}: {c['verdict']}" for c in report["clips"]]
    keeps = report["b_keeps_all_above_threshold"]
    if keeps is not None:
        lines.append(f"=> b {'keeps every clip' if keeps else 'does NOT keep every clip'} above the VMAF threshold")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashvsr-quality", description=__doc__.splitlines()[0])
    p.add_argument("clips", nargs="+", help="low-resolution input clips (what a validator sends)")
    p.add_argument("--reference", action="append", dest="references",
                   help="high-resolution reference of each clip, in clip order (repeatable)")
    p.add_argument("--scale", type=int, choices=SCORED_SCALES, default=4, help="upscale factor without references")
    p.add_argument("--a", type=Setting.parse, default=Setting.parse(f"precision=bf16,{MINER_CACHE}"), help=f"first setting: upscaler keys key=value[,key=value], tuples joined with + (default precision=bf16,{MINER_CACHE}: the miner's bf16)")
    p.add_argument("--b", type=Setting.parse, default=Setting.parse(f"precision=fp8,{MINER_CACHE}"), help=f"second setting, the one judged (default precision=fp8,{MINER_CACHE}: FP8 linears and, on sm_90, FP8 attention; e.g. precision=fp8,{MINER_CACHE},fp8_layers=self_qkv+ffn_up or ...,fp8_attention=false)")
    p.add_argument("--weights", help="model dir or 'auto' (default: configs/upscaler.toml)")
    p.add_argument("--config", default="upscaler", help="upscaler TOML to start from")
    p.add_argument("--device", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--variant", default="tiny", help="pipeline (tiny, tiny-long, full)")
    p.add_argument("--crf", type=int, default=18, help="HEVC quality of the outputs (the miner's first encode)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validator's frame sampling")
    p.add_argument("--out-dir", help="keep the outputs here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0: the second setting keeps every referenced clip above the threshold."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        report = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if report["b_keeps_all_above_threshold"] is False else 0


if __name__ == "__main__":
    raise SystemExit(main())
