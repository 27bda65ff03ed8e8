"""The pinned environment: every package the project pulls in is pinned by the lock for this Python, and
an environment built by scripts/setup_env.sh holds exactly those versions."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / f"lock-cp{sys.version_info[0]}{sys.version_info[1]}.txt"
EXTRAS = ("test", "score", "cluster")
UNLOCKED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def pulled_in() -> dict[str, str]:
    """{name: installed version} of the project's requirements (its extras included), transitively."""
    seen: dict[str, str] = {}
    todo = [(req, extras) for req in (metadata.requires("flashvsr-miner") or []) for extras in [EXTRAS]]
    while todo:
        text, extras = todo.pop()
        req = Requirement(text)
        env = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker and not any(req.marker.evaluate(e) for e in env):
            continue
        name = canonical(req.name)
        if name in seen or UNLOCKED.match(name):
            continue
        seen[name] = metadata.version(name)
        todo += [(sub, tuple(req.extras)) for sub in (metadata.requires(name) or [])]
    return seen


def test_lock_exists_for_this_python() -> None:
    assert LOCK.is_file(), f"no lock for Python {sys.version_info[:2]}: run python scripts/lock.py"
    pins = lock_pins()
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values())
    assert not any(UNLOCKED.match(name) for name in pins), "torch/Triton belong in requirements/torch-*.txt"


def test_every_package_pulled_in_is_pinned_at_its_installed_version() -> None:
    if not (Path(sys.prefix) / ".flashvsr-env").is_file():
        pytest.skip("this environment was not built by scripts/setup_env.sh")
    try:
        metadata.version("flashvsr-miner")
    except metadata.PackageNotFoundError:
        pytest.skip("flashvsr-miner is not installed in this environment")
    pins = lock_pins()
    installed = pulled_in()
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"pulled in but not pinned in {LOCK.name}: {unpinned} (run python scripts/lock.py)"
    drift = {n: (v, pins[n]) for n, v in installed.items() if v != pins[n]}
    assert not drift, f"installed vs pinned: {drift}"
