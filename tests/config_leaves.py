"""The numeric leaves of a configuration table (the configs/*.toml rule-table tests walk them)."""

from __future__ import annotations

from typing import Any, Iterator


def numeric_leaves(table: dict[str, Any], where: str = "") -> Iterator[tuple[str, Any]]:
    """Each ``(dotted key, value)`` of ``table`` whose value is a number (a bool is none)."""
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, dict):
            yield from numeric_leaves(value, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, value
