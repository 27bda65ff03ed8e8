"""The small-card checks of a ``flashvsr-bench`` JSON (``scripts/bench_small_gpu.sh``): per capped case its
frames/s against the untiled run of the same variant and task, its peak against the cap, and the
planner's estimate against the measured time; then the seam error rows, and each run's peak as a
``[[peak]]`` row of configs/throughput.toml (the memory model's input; its blend group recorded).

    python -m scripts.small_gpu_summary runs/small-gpu/bench-small-gpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SPEED_TARGET = 0.60     # a capped 4K run at >= 60% of the untiled frames/s
ESTIMATE_TOLERANCE = 0.15  # the planner's estimate within 15% of the measured time


def summary(result: dict[str, Any]) -> list[str]:
    """Readable lines: one per benchmark row, then one per seam-error row."""
    rows = [r for r in result["rows"] if "error" not in r]
    untiled = {(r["variant"], r["task"]): r for r in rows if not r.get("max_vram_gib") and r["tiling"]["tiles"] == 1}
    lines = [f"{result['gpu']} ({result['gpu_memory_gib']} GiB), torch {result['torch']}, kv cache {result['kv_cache']}"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['case']:28} ERROR {r['error']}")
            continue
        t = r["tiling"]
        line = (f"{r['case']:28} {t['tiles']:2d} tiles {t['tile_width']}x{t['tile_height']} overlap {t['overlap']} "
                f"dec {t['decoder_frames_per_pass']}/pass  {r['fps']:6.2f} fps  peak {r['peak_vram_gib']:5.2f} GiB")
        cap = r.get("max_vram_gib") or 0
        if cap:
            line += f" (cap {cap:g}: {'ok' if r['peak_vram_gib'] <= cap else 'OVER'})"
        base = untiled.get((r["variant"], r["task"]))
        if base is not None and base is not r:
            share = r["fps"] / base["fps"]
            line += f"  {100 * share:.0f}% of untiled"
            if r["task"] == "SD24K" and r["variant"] == "tiny":
                line += f" ({'met' if share >= SPEED_TARGET else 'missed'} {100 * SPEED_TARGET:.0f}%)"
        planner = r.get("planner")
        if planner:
            off = planner["est_over_measured"] - 1.0
            line += (f"  planner {planner['est_s']:.1f}s vs {r['total_s']:.1f}s measured ({100 * off:+.0f}%, "
                     f"{'within' if abs(off) <= ESTIMATE_TOLERANCE else 'outside'} {100 * ESTIMATE_TOLERANCE:.0f}%)")
        lines.append(line)
    for s in result.get("seam_error", []):
        lines.append(f"seams {s['case']:22} {s['tiles']} tiles {s['tile_width']}x{s['tile_height']} overlap {s['overlap']:3d}: "
                     + "; ".join(f"{k} {s[k]['psnr_db']} dB max {s[k]['max_abs']:.0f} mean {s[k]['mean_abs']}"
                                 for k in ("all", "seams", "away")))
    return lines


def peak_rows(result: dict[str, Any], date: str) -> list[str]:
    """Each measured run's peak as a ``[[peak]]`` row (TOML) for the throughput table, the blend included and
    recorded (``blend_gib``: the fit takes it off)."""
    out = []
    for r in result["rows"]:
        t = r.get("tiling", {})
        if "error" in r or "model_width" not in t:
            continue
        cap = f" under a {r['max_vram_gib']:g} GiB cap" if r.get("max_vram_gib") else ""
        out += [f"[[peak]]    # {r['case']} ({t['tiles']} tiles){cap}, {result['gpu']} {date}",
                f'decoder = "{t["decoder"]}"', f"model_width = {t['model_width']}", f"model_height = {t['model_height']}",
                f"decoder_frames = {t['decoder_frames_per_pass']}", f'kv_cache = "{result["kv_cache"]}"',
                f"peak_gib = {r['peak_vram_gib']}"] + ([f"blend_gib = {t['blend_gib']}"] if t.get("blend_gib") else []) + [""]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="small_gpu_summary", description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="flashvsr-bench --json output")
    args = p.parse_args(argv)
    result = json.loads(args.json.read_text())
    print("\n".join(summary(result)))
    rows = peak_rows(result, time.strftime("%Y-%m-%d", time.gmtime(args.json.stat().st_mtime)))
    if rows:
        print("\n# measured peaks, as rows of configs/throughput.toml:\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
