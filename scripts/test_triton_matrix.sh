#!/usr/bin/env bash
# The kernel tests (interpreter runs, and the compile checks for sm_90/sm_89/sm_80 whose per-kernel lines
# are shown: no GPU needed) on the venv's own Triton, then on each release of requirements/triton-matrix.txt
# (unless FLASHVSR_TRITON_MATRIX=0). Each further release is installed once into a cache folder (only the
# triton package; PYTHONPATH puts it before the venv's) and reused.
#   bash scripts/test_triton_matrix.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${FLASHVSR_VENV:-${VENV:-.venv}}}"
PY="$VENV/bin/python"
CACHE="${FLASHVSR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flashvsr-miner}"
TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

kernel_tests() {  # $1: a folder to put first on PYTHONPATH, or ""
  local path="${1:+$1${PYTHONPATH:+:$PYTHONPATH}}"
  echo "test_triton_matrix: kernel tests on Triton $(PYTHONPATH="${path:-${PYTHONPATH:-}}" "$PY" -c 'import triton; print(triton.__version__)')"
  # -rP shows the passed compile check's per-kernel lines (and the few log lines of passed kernel tests)
  PYTHONPATH="${path:-${PYTHONPATH:-}}" "$PY" -m pytest -q -rP -p no:cacheprovider tests/kernels
}

status=0
kernel_tests "" || status=$?
if [ "${FLASHVSR_TRITON_MATRIX:-1}" != "0" ]; then
  for pin in $(grep -E '^triton==' requirements/triton-matrix.txt); do
    version="${pin#triton==}"
    overlay="$CACHE/$TAG-triton-$version"
    if [ ! -f "$overlay/.complete" ]; then
      echo "test_triton_matrix: installing $pin into $overlay"
      rm -rf "$overlay"
      "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$overlay" "$pin"
      touch "$overlay/.complete"
    fi
    kernel_tests "$overlay" || status=$?
  done
fi
exit $status
