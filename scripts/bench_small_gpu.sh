#!/usr/bin/env bash
# 24 GB and 16 GB cards measured on a large GPU, in one call (about 7-8 minutes on an H100 or H200):
#
#   bash scripts/bench_small_gpu.sh OUTDIR            # PYTHON=/path/to/python to pick the interpreter
#
# SMALL_GPU_FRAMES (default 300) sets the Tiny clips' length, SMALL_GPU_SEAM_OVERLAPS (default 32) the
# overlaps measured besides the chosen one (e.g. 32,128: one more tiled pass per capped case).
#
# Tiny SD24K (960x540 -> 3840x2160) 300 frames untiled, then with the GPU memory capped at 22 GiB and at
# 15 GiB (tiles chosen from the capped free memory); Full SD2HD 60 frames capped at 22 GiB, then untiled;
# the miner's settings (random weights of the real shapes, bf16, FP8 K/V cache, compiled, HEVC
# ultrafast). Then the seam error of every capped case: its tiled output against the untiled output over
# 29 frames (same weights), at the chosen overlap and at 32 px. Writes OUTDIR/bench-small-gpu.json
# (after every row), the console log OUTDIR/bench-small-gpu.txt and the checks OUTDIR/summary.txt.
set -euo pipefail
OUT="${1:?usage: bash scripts/bench_small_gpu.sh OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
FRAMES="${SMALL_GPU_FRAMES:-300}"
OVERLAPS="${SMALL_GPU_SEAM_OVERLAPS:-32}"

status=0
"$PY" -m scripts.bench --weights random --preset ultrafast --kv-cache fp8 --compile \
  --case "tiny:SD24K:$FRAMES" --case "tiny:SD24K:$FRAMES@22" --case "tiny:SD24K:$FRAMES@15" \
  --case full:SD2HD:60@22 --case full:SD2HD:60 \
  --seam-error 29 --seam-overlaps "$OVERLAPS" \
  --json "$OUT/bench-small-gpu.json" 2>&1 | tee "$OUT/bench-small-gpu.txt" || status=$?
if [ -f "$OUT/bench-small-gpu.json" ]; then
  "$PY" -m scripts.small_gpu_summary "$OUT/bench-small-gpu.json" | tee "$OUT/summary.txt"
fi
exit "$status"
