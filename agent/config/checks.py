"""Small value checks shared by the models: each returns a plain message, or None when the value is fine."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent.transport.topics import validate_prefix

Check = Callable[[Any], "str | None"]

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def in_range(value: Any, lo: float | None, hi: float | None) -> str | None:
    """Bounds are inclusive; booleans and non-numbers are left to the type check."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (lo is None and hi is None):
        return None
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"must be within {lo}..{hi}, got {value}"
    if lo is not None and hi is None and value < lo:
        return f"must be ≥ {lo}, got {value}"
    if hi is not None and lo is None and value > hi:
        return f"must be ≤ {hi}, got {value}"
    return None


def name(value: str) -> str | None:
    """Camera ids and sites become topic levels and directory names, so they keep to a safe alphabet."""
    if _NAME.fullmatch(value):
        return None
    return f"must be 1–64 characters of A–Z a–z 0–9 _ . - not starting with '.', got {value!r}"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def topic_prefix(value: str) -> str | None:
    """The publisher's own rule (ids joined by ``/``), so a prefix that passes here is one it accepts."""
    try:
        validate_prefix(value)
    except ValueError as e:
        return str(e)
    return None


def topic_filter(value: str) -> str | None:
    """An MQTT filter: ``+`` and ``#`` fill whole levels and ``#`` comes last; shares go in share_group."""
    if not value or "\0" in value:
        return "must be a non-empty topic filter"
    if value.startswith("$share/"):
        return "must not include '$share/…': set share_group instead"
    levels = value.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            return f"'+' and '#' must fill a whole level, got {value!r}"
        if level == "#" and i != len(levels) - 1:
            return f"'#' must be the last level, got {value!r}"
    return None


def share_group(value: str) -> str | None:
    if not value or any(c in value for c in "/+#\0"):
        return f"must be a non-empty name without '/', '+' or '#', got {value!r}"
    return None
