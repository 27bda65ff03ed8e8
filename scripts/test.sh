#!/usr/bin/env bash
# The README's test command (what CI runs): set up the pinned environment (scripts/setup_env.sh), run the
# test suite, then the kernel tests once more on each further Triton release (scripts/test_triton_matrix.sh).
# Usage: bash scripts/test.sh [pytest args...]   (with arguments: only that pytest run, no Triton matrix;
# FLASHVSR_TRITON_MATRIX=0 skips the matrix)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLASHVSR_VENV:-${VENV:-.venv}}"
bash scripts/setup_env.sh "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
status=0
python -m pytest -q "$@" || status=$?
if [ $# -eq 0 ] && [ "${FLASHVSR_TRITON_MATRIX:-1}" != "0" ]; then
  bash scripts/test_triton_matrix.sh "$VENV" || status=$?
fi
exit $status
