#!/usr/bin/env bash
# The README's test command (what CI runs): set up the pinned environment (scripts/setup_env.sh), run the
# test suite except the kernel tests, then the kernel tests once per Triton release: the venv's own and
# each of requirements/triton-matrix.txt (scripts/test_triton_matrix.sh).
# Usage: bash scripts/test.sh [pytest args...]   (with arguments: only that pytest run)
#        FLASHVSR_TRITON_MATRIX=0 bash scripts/test.sh   (kernel tests on the venv's Triton only)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLASHVSR_VENV:-${VENV:-.venv}}"
bash scripts/setup_env.sh "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ $# -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
status=0
python -m pytest -q --ignore=tests/kernels || status=$?
bash scripts/test_triton_matrix.sh "$VENV" || status=$?
exit $status
