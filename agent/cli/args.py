"""argparse types that refuse an out-of-range number where it is typed, saying the range.

Why: a bad number otherwise surfaces later and worse: ``simulate --width -5`` as a traceback from deep in
the scene, ``simulate --port 99999`` as a server that announces a port it never listens on, ``demo
--duration -1`` as a run that films nothing and then fails to find its own camera. argparse reports these as
``argument --width: 16..8192, got -5`` with exit status 2, before anything starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A whole number within lo..hi (hi None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            wanted = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"{wanted}, got {value}")
        return value

    return parse


def float_in(lo: float, hi: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite number within lo..hi; with ``above`` strictly greater than lo."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (
            not math.isfinite(value)
            or value < lo
            or (above and value == lo)
            or (hi is not None and value > hi)
        ):
            low = f"above {lo:g}" if above else f"at least {lo:g}"
            wanted = f"{low} and at most {hi:g}" if hi is not None else low
            raise argparse.ArgumentTypeError(f"{wanted}, got {text}")
        return value

    return parse


PORT = int_in(1, 65535)
POSITIVE = float_in(0, above=True)
COUNT = int_in(1)
