"""The throughput calibration kept across miner restarts: round trip, scope, bad files, atomic writes."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from upscaler.calibration import CalibrationStore, ThroughputCalibration
from upscaler.planner import ThroughputTable

SCOPE = {"device_class": "h200", "table": "abc"}


def _calibrated() -> ThroughputCalibration:
    calibration = ThroughputCalibration(weight=1.0)
    calibration.observe("tiny", 3840, 2160, measured_fps=9.0, table_fps=8.0)
    calibration.observe("tiny+tiled", 3840, 2160, measured_fps=2.0, table_fps=2.5)
    return calibration


def test_saved_factors_come_back_in_a_new_calibration(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "state" / "calibration.json", SCOPE)
    saved = _calibrated()
    store.save(saved)
    restored = ThroughputCalibration()
    assert store.load_into(restored) == 2
    assert restored.state() == saved.state()
    assert restored.factor("tiny", 3840, 2160) == 9.0 / 8.0 and restored.factor("tiny+tiled", 3840, 2160) == 0.8
    assert [p.name for p in store.path.parent.iterdir()] == ["calibration.json"]  # no temporary left


def test_another_gpu_or_table_starts_from_the_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "calibration.json"
    CalibrationStore(path, SCOPE).save(_calibrated())
    for scope in ({**SCOPE, "device_class": "h100"}, {**SCOPE, "table": "def"}):
        fresh = ThroughputCalibration()
        with caplog.at_level(logging.INFO):
            assert CalibrationStore(path, scope).load_into(fresh) == 0
        assert fresh.state() == [] and "not used" in caplog.text


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"format": 99}),
                                     json.dumps({"format": 1, "scope": SCOPE, "factors": [{"variant": "tiny"}]})])
def test_unreadable_or_malformed_state_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(content)
    fresh = ThroughputCalibration()
    assert CalibrationStore(path, SCOPE).load_into(fresh) == 0 and fresh.state() == []
    assert CalibrationStore(tmp_path / "missing.json", SCOPE).load_into(fresh) == 0


def test_restored_factors_are_clamped_and_a_failed_save_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"format": 1, "scope": SCOPE, "factors": [
        {"variant": "tiny", "width": 64, "height": 64, "factor": 40.0}]}))
    bounded = ThroughputCalibration(max_factor=1.5)
    assert CalibrationStore(path, SCOPE).load_into(bounded) == 1 and bounded.factor("tiny", 64, 64) == 1.5
    blocker = tmp_path / "file"
    blocker.write_text("")
    CalibrationStore(blocker / "calibration.json", SCOPE).save(bounded)  # parent is a file: logged only
    assert blocker.read_text() == ""


def test_table_fingerprint_follows_the_measured_figures() -> None:
    table = ThroughputTable.load()
    assert table.fingerprint() == ThroughputTable.load().fingerprint()
    assert replace(table, tiled_slowdown=table.tiled_slowdown + 1).fingerprint() != table.fingerprint()
    assert replace(table, entries=table.entries[1:]).fingerprint() != table.fingerprint()
    assert replace(table, safety_margin=2.0).fingerprint() == table.fingerprint()  # not a figure factors scale


def test_one_file_per_device_class_next_to_the_state_path(tmp_path: Path) -> None:
    store = CalibrationStore.for_device(tmp_path / "calibration.json", "h200", "abc")
    assert store.path == tmp_path / "calibration.h200.json" and dict(store.scope) == SCOPE
    assert store.legacy_path == tmp_path / "calibration.json"


def test_the_single_file_of_earlier_versions_is_migrated_once_for_its_class(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An operator upgrading keeps the calibration of the GPU it was measured on: the old calibration.json
    is read for the class it names, written to that class's file, and not read again for that class."""
    legacy = tmp_path / "calibration.json"
    CalibrationStore(legacy, SCOPE).save(_calibrated())  # what the single-file version wrote
    before = legacy.read_text()
    store = CalibrationStore.for_device(legacy, "h200", "abc")
    restored = ThroughputCalibration()
    with caplog.at_level(logging.INFO):
        assert store.load_into(restored) == 2
    assert restored.state() == _calibrated().state()
    assert "calibration migrated" in caplog.text and json.loads(store.path.read_text())["scope"] == SCOPE
    assert legacy.read_text() == before  # left as it was (an older miner can still read it)

    legacy.write_text("{not json")  # the class's own file is read from now on
    again = ThroughputCalibration()
    assert CalibrationStore.for_device(legacy, "h200", "abc").load_into(again) == 2 and again.state() == restored.state()


def test_the_single_file_of_another_class_or_table_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    legacy = tmp_path / "calibration.json"
    CalibrationStore(legacy, SCOPE).save(_calibrated())
    for device_class, table in (("h100", "abc"), ("h200", "def")):
        fresh = ThroughputCalibration()
        with caplog.at_level(logging.INFO):
            assert CalibrationStore.for_device(legacy, device_class, table).load_into(fresh) == 0
        assert fresh.state() == [] and "not used" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]
