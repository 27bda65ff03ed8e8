#!/usr/bin/env bash
# One environment for both README commands: creates (or updates) the virtual environment and installs
# flashvsr-miner[test,score,cluster] from the pinned set in requirements/. Both scripts/main.sh and
# scripts/test.sh run it first, so whichever runs first builds the same environment.
#
#   bash scripts/setup_env.sh [VENV]        # default: $FLASHVSR_VENV, else .venv
#
# A stamp in the venv holds the hash of requirements/, pyproject.toml and this script: the install runs
# again only when one of them changed. torch: kept if the venv already has one (a CUDA build the operator
# chose); otherwise requirements/torch-gpu.txt on a machine with an NVIDIA GPU, torch-cpu.txt elsewhere
# (FLASHVSR_TORCH=cpu|gpu overrides; FLASHVSR_TORCH_PIP_ARGS adds e.g. an --index-url).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${FLASHVSR_VENV:-${VENV:-.venv}}}"
PYTHON="${PYTHON:-python3}"
EXTRAS="test,score,cluster"

say() { echo "setup_env: $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
LOCK="requirements/lock-$TAG.txt"
if [ ! -f "$LOCK" ]; then
  say "no pinned set for Python $TAG ($LOCK); supported: $(ls requirements/lock-cp*.txt | sed 's/.*lock-//; s/.txt//' | tr '\n' ' ')"
  say "use one of those (PYTHON=python3.11 bash scripts/...), or pin this one with: python scripts/lock.py --python $PYTHON"
  exit 2
fi

STAMP="$VENV/.flashvsr-env"
HASH=$(cat requirements/*.txt pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && "$PY" -c "import torch, miner" 2>/dev/null; then
  exit 0
fi
[ -f "$STAMP" ] && say "requirements changed since this venv was set up: installing again"

pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
pip_install -r requirements/bootstrap.txt

if ! "$PY" -c "import torch" 2>/dev/null; then
  kind="${FLASHVSR_TORCH:-}"
  if [ -z "$kind" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then kind=gpu; else kind=cpu; fi
  fi
  say "installing torch from requirements/torch-$kind.txt"
  # shellcheck disable=SC2086
  pip_install -r "requirements/torch-$kind.txt" ${FLASHVSR_TORCH_PIP_ARGS:-}
fi

# Constraints: the lock, plus the torch/Triton now in the venv (kept as they are). With an operator's own
# torch, the lock's pins of packages that torch requires give way to what that torch brought.
CONSTRAINTS="$VENV/.flashvsr-constraints.txt"
"$PY" - "$LOCK" >"$CONSTRAINTS" <<'EOF'
import re, sys
from importlib import metadata

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

torch = metadata.distribution("torch")
own_torch = torch.version.split("+")[0] not in {
    line.split("==")[1].strip() for f in ("requirements/torch-cpu.txt", "requirements/torch-gpu.txt")
    for line in open(f) if line.startswith("torch==")}
torch_needs = {canonical(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]) for r in (torch.requires or [])}
print(f"torch=={torch.version}")
try:
    print(f"triton=={metadata.version('triton')}")
except metadata.PackageNotFoundError:
    print(next(line.strip() for line in open("requirements/torch-cpu.txt") if line.startswith("triton==")))
for line in open(sys.argv[1]):
    name = canonical(line.split("==")[0]) if "==" in line else ""
    if name and not (own_torch and name in torch_needs):
        print(line.strip())
EOF
say "installing flashvsr-miner[$EXTRAS] with the constraints of $LOCK"
pip_install --no-build-isolation -c "$CONSTRAINTS" -e ".[$EXTRAS]"
echo "$HASH" >"$STAMP"
"$PY" - <<'EOF'
from importlib import metadata
print("setup_env: " + ", ".join(f"{n} {metadata.version(n)}" for n in ("torch", "triton", "av", "ray")))
EOF
