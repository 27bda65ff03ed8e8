#!/usr/bin/env bash
# Set up a virtual environment (CPU build of torch) and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# CPU-only machines: the CPU build of torch (a CUDA machine keeps the torch it has), then the
# Triton version the kernels are tested with under the interpreter.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -c "import triton" 2>/dev/null || python -m pip install -q "triton==3.6.0"
python -m pip install -q -e ".[test,score]"
exec python -m pytest -q "$@"
