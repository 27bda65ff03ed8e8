#!/usr/bin/env bash
# The kernel tests (interpreter runs and the sm_80/sm_89/sm_90 compile checks, no GPU needed) on each
# Triton release of requirements/triton-matrix.txt, beside the venv's own. Each release is installed once
# into a cache folder (only the triton package; PYTHONPATH puts it before the venv's) and reused.
#   bash scripts/test_triton_matrix.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${FLASHVSR_VENV:-${VENV:-.venv}}}"
PY="$VENV/bin/python"
CACHE="${FLASHVSR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flashvsr-miner}"
TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
status=0
for pin in $(grep -E '^triton==' requirements/triton-matrix.txt); do
  version="${pin#triton==}"
  overlay="$CACHE/$TAG-triton-$version"
  if [ ! -f "$overlay/.complete" ]; then
    echo "test_triton_matrix: installing $pin into $overlay"
    rm -rf "$overlay"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$overlay" "$pin"
    touch "$overlay/.complete"
  fi
  echo "test_triton_matrix: kernel tests on $("$PY" -c "import sys; sys.path.insert(0, '$overlay'); import triton; print('Triton', triton.__version__)")"
  PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider tests/kernels || status=$?
done
exit $status
