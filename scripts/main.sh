#!/usr/bin/env bash
# The main command: set up the pinned environment (scripts/setup_env.sh, the same one scripts/test.sh
# uses), then run the miner and the mock validator locally and print the report. Arguments go to
# scripts/run_local.py, e.g.:
#   bash scripts/main.sh --random-weights --small
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLASHVSR_VENV:-${VENV:-.venv}}"
bash scripts/setup_env.sh "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
exec python scripts/run_local.py "$@"
