"""Shape limits of request bodies, checked before any model sees them.

    value = load_json(body, max_depth=16)   # JsonShapeError (answered 400): not JSON, or nested too deep

``json.loads`` recurses per nesting level: a 64 KiB body of ``[`` would end in a ``RecursionError``
(an unhandled 500) in whatever parses it next. Sizes are bounded by the per-route body caps of the
server (``[server.limits]``) and list and string lengths by the synapse models.
"""

from __future__ import annotations

import json
from typing import Any


class JsonShapeError(ValueError):
    """A body that is no JSON value of bounded nesting."""


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest


def load_json(body: bytes, *, max_depth: int) -> Any:
    """The JSON value of ``body``; ``JsonShapeError`` unless it is JSON nesting at most ``max_depth`` levels."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise JsonShapeError(f"request body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonShapeError(f"body is not JSON: {exc}") from None
    if json_depth(value) > max_depth:
        raise JsonShapeError(f"request body nests deeper than {max_depth} levels")
    return value
