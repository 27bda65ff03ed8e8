#!/usr/bin/env bash
# The main command: install what is needed (once) into ./.venv, then run the miner and the mock validator
# locally and print the report. Arguments go to scripts/run_local.py, e.g.:
#   bash scripts/main.sh --random-weights --small
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLASHVSR_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch" 2>/dev/null; then
  # torch first, so the project install keeps it; FLASHVSR_TORCH_PIP_ARGS can add e.g. an --index-url
  echo "installing torch"
  # shellcheck disable=SC2086
  pip install torch==2.13.0 ${FLASHVSR_TORCH_PIP_ARGS:-}
fi
if ! python -c "import miner, upscaler, vmaf_torch, pytest" 2>/dev/null; then
  echo "installing flashvsr-miner with the test and score extras"
  pip install -e ".[test,score]"
fi

exec python scripts/run_local.py "$@"
