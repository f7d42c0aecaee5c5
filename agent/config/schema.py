"""Build the frozen models from parsed TOML, reading the field types the models declare.

One pass collects every problem (unknown keys, wrong types, missing keys, the models' own checks) with its
full key path, so ``check-config`` can list them all at once. Values are never coerced across types: TOML
has real integers, floats, booleans and strings, and a quoted ``"0.5"`` is a mistake worth naming. The one
widening is an integer where a float is expected (``stats_interval_s = 60``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.errors import ConfigError

T = TypeVar("T")


class Problems:
    """Problems found so far, each with its full key path."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def __bool__(self) -> bool:
        return bool(self.items)


class _Invalid(Exception):
    """A value does not fit its declared type; the message is ready for the user."""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def build(cls: type[T], data: Any, path: str, problems: Problems) -> T | None:
    """The model ``cls`` from the table ``data`` at ``path``, or None after adding what is wrong."""
    if not isinstance(data, Mapping):
        problems.add(path, f"expected a table, got {describe(data)}")
        return None
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(join(path, key), f"unknown key{hint}")
    hints = typing.get_type_hints(cls)
    before = len(problems.items)
    values: dict[str, Any] = {}
    for name, f in known.items():
        key, tp = join(path, name), hints[name]
        if dataclasses.is_dataclass(tp):  # a sub-table: absent means all its defaults
            values[name] = build(tp, data.get(name, {}), key, problems)  # type: ignore[arg-type]
        elif name in data:
            try:
                values[name] = convert(tp, data[name], secret=f.metadata.get("secret", False))
            except _Invalid as e:
                problems.add(key, str(e))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.add(key, "missing required key")
    if len(problems.items) > before:
        return None
    try:
        return cls(**values)
    except ConfigError as e:
        for err in getattr(e, "errors", (e,)):
            problems.add(join(path, err.key), err.message)
        return None


def convert(tp: Any, value: Any, *, secret: bool = False) -> Any:
    """``value`` as type ``tp``, or ``_Invalid`` saying what was expected and what was found."""
    found = "a value that is not shown (secret)" if secret else describe(value)
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        if value in options and type(value) is type(options[0]):
            return value
        listed = ", ".join(repr(o) for o in options)
        hint = ""
        if isinstance(value, str):
            folded = [str(o) for o in options if str(o).casefold() == value.casefold()]
            close = folded or difflib.get_close_matches(value, [str(o) for o in options], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        elif str(value) in options:
            hint = f' (write it as a string: "{value}")'
        raise _Invalid(f"expected one of {listed}, got {found}{hint}")
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        if len(members) == 1:  # ``X | None``: TOML has no null, so the value must be an X
            return convert(members[0], value, secret=secret)
        for member in members:
            try:
                return convert(member, value, secret=secret)
            except _Invalid:
                continue
        raise _Invalid(f"expected {' or '.join(_expected(m) for m in members)}, got {found}")
    if not _fits(tp, value):
        raise _Invalid(f"expected {_expected(tp)}, got {found}")
    if tp is float:
        return float(value)
    if tp is Path:
        if not value:
            raise _Invalid("expected a path, got an empty string")
        return Path(value)
    return value


def _fits(tp: Any, value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp in (str, Path):
        return isinstance(value, str)
    raise TypeError(f"config models may not use type {tp!r}")  # a programming error, not a user's


def _expected(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(o) for o in typing.get_args(tp))
    return names.get(tp, str(tp))


def describe(value: Any) -> str:
    """How a TOML value reads in a message: its TOML type, then the value."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (Mapping, "table"),
        (list, "array"),
        ((dt.datetime, dt.date, dt.time), "datetime"),
    ]
    kind = next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)
    if kind == "table":
        return "a table"
    if kind == "boolean":
        return f"boolean {str(value).lower()}"
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{kind} {text}"
