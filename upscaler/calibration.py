"""Throughput calibration: estimates that follow the speed this machine actually delivers.

The throughput table (configs/throughput.toml) is measured on one GPU with one version of the code; a
miner on another GPU of the same class, another host CPU (the encoder runs there) or newer code runs
faster or slower. Each finished clip gives a ratio of its measured frames/s to the table's figure for
its variant and output size (tiled clips under their own name, ``tiny+tiled``: their speed is not the
untiled one's); the planner multiplies the table by a moving average of those ratios, so admission and
the LengthCheck answer converge on what the workers really do.

:class:`CalibrationStore` keeps the factors in a small JSON file so that they survive a restart of the
miner (a pm2 restart or an update would otherwise send it back to the table's figures, e.g. half the
H100's speed on an unmeasured GPU, until its next long clips). The file names the device class and a
fingerprint of the table the factors are relative to; a different GPU or a changed table discards it.
There is one file per device class (:meth:`CalibrationStore.for_device`); the single file of earlier
versions is read once, for the class it names, and its factors written to that class's file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ThroughputCalibration:
    """Measured / table frames-per-second ratios per (variant, output width, output height).

    ``weight`` is the share of a new observation in the moving average (1: the last clip only);
    ratios are clamped to ``[min_factor, max_factor]`` so one odd clip cannot swing admission far.
    A size without observations of its own uses the smallest ratio seen for its variant (the cautious
    choice: a slow size predicts a slow machine), and 1 before any observation."""

    weight: float = 0.5
    min_factor: float = 0.25
    max_factor: float = 2.0
    _factors: dict[tuple[str, int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1:
            raise ValueError(f"calibration weight must be in (0, 1], got {self.weight}")
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise ValueError(f"calibration bounds must satisfy 0 < min <= 1 <= max, got "
                             f"[{self.min_factor}, {self.max_factor}]")

    def factor(self, variant: str, width: int, height: int) -> float:
        """The multiplier of the table's frames/s for this variant and output size."""
        exact = self._factors.get((variant, width, height))
        if exact is not None:
            return exact
        return min((f for (name, _, _), f in self._factors.items() if name == variant), default=1.0)

    def observe(self, variant: str, width: int, height: int, measured_fps: float, table_fps: float) -> float:
        """Fold one finished clip in; returns the updated factor."""
        if measured_fps <= 0 or table_fps <= 0:
            raise ValueError(f"frames/s must be positive (measured {measured_fps}, table {table_fps})")
        ratio = min(max(measured_fps / table_fps, self.min_factor), self.max_factor)
        key = (variant, width, height)
        previous = self._factors.get(key)
        updated = ratio if previous is None else previous + self.weight * (ratio - previous)
        self._factors[key] = updated
        log.info("throughput calibrated variant=%s size=%dx%d table_fps=%.2f measured_fps=%.2f factor=%.3f",
                 variant, width, height, table_fps, measured_fps, updated)
        return updated

    def state(self) -> list[dict[str, Any]]:
        """The factors as plain records (``variant``, ``width``, ``height``, ``factor``)."""
        return [{"variant": name, "width": width, "height": height, "factor": factor}
                for (name, width, height), factor in sorted(self._factors.items())]

    def restore(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Take factors from :meth:`state` records (clamped to the bounds); returns how many."""
        restored = {}
        for record in records:
            key = (str(record["variant"]), int(record["width"]), int(record["height"]))
            restored[key] = min(max(float(record["factor"]), self.min_factor), self.max_factor)
        self._factors.update(restored)
        return len(restored)


STATE_FORMAT = 1


@dataclass(frozen=True)
class CalibrationStore:
    """A :class:`ThroughputCalibration` of one machine kept in the JSON file ``path``; ``scope`` (device
    class, table fingerprint) must match for a saved calibration to be used."""

    path: Path
    scope: Mapping[str, str]
    legacy_path: Path | None = None
    """The single file of earlier versions (every class in one file): read while ``path`` does not exist."""

    @classmethod
    def for_device(cls, state_path: Path, device_class: str, table: str) -> "CalibrationStore":
        """The store of ``device_class`` next to ``state_path`` (``calibration.json`` ->
        ``calibration.h100.json``), relative to the table of fingerprint ``table``; ``state_path`` itself
        is the legacy file."""
        return cls(state_path.with_name(f"{state_path.stem}.{device_class}{state_path.suffix}"),
                   {"device_class": device_class, "table": table}, legacy_path=state_path)

    def load_into(self, calibration: ThroughputCalibration) -> int:
        """Restore the saved factors into ``calibration`` when the file exists and its scope matches;
        returns how many were restored (0: none, with the reason logged). Without a file of its own, the
        legacy file's factors are used when its scope matches, and written to ``path`` (a one-time
        migration, logged)."""
        if self.legacy_path is None or self.path.exists() or not self.legacy_path.exists():
            return self._restore(self.path, calibration)
        count = self._restore(self.legacy_path, calibration)
        if count and self.save(calibration):
            log.info("calibration migrated from=%s to=%s factors=%d: the old file is no longer read for this "
                     "device class", self.legacy_path, self.path, count)
        return count

    def _restore(self, path: Path, calibration: ThroughputCalibration) -> int:
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("calibration state unreadable path=%s error=%r: starting from the table", path, exc)
            return 0
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT or saved.get("scope") != dict(self.scope):
            log.info("calibration state not used path=%s saved_scope=%s current_scope=%s", path,
                     saved.get("scope") if isinstance(saved, dict) else None, dict(self.scope))
            return 0
        try:
            count = calibration.restore(saved.get("factors", []))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("calibration state malformed path=%s error=%r: starting from the table", path, exc)
            return 0
        log.info("calibration restored path=%s factors=%d", path, count)
        return count

    def save(self, calibration: ThroughputCalibration) -> bool:
        """Write the factors atomically (a temporary file renamed over the old one); whether it was written.
        A failure is logged, never raised: calibration is an optimisation."""
        record = {"format": STATE_FORMAT, "scope": dict(self.scope), "factors": calibration.state()}
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            with os.fdopen(fd, "w") as out:
                json.dump(record, out, indent=1)
            os.replace(tmp, self.path)
            tmp = None
            return True
        except OSError as exc:
            log.warning("calibration state not saved path=%s error=%r", self.path, exc)
            return False
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
