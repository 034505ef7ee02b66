"""Limits on JSON read from a request, a worker or a file: nesting depth and non-standard constants."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 100
"""Nesting no prompt, config or result needs; deeper JSON is refused before it is parsed."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text, strings skipped (parsing deeper JSON recurses)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', text)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_bounded(text: bytes) -> Any:
    """``json.loads`` that refuses NaN/Infinity and nesting past MAX_DEPTH with ValueError."""
    few = text.count(b"[") + text.count(b"{") <= MAX_DEPTH  # then it cannot nest deeper: nothing to walk
    if not few and nesting_depth(text) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return json.loads(text, parse_constant=_reject_constant)
