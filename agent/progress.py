"""A small progress bar for long CLI work: drawn on a terminal only, silent in pipes, logs and CI."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress(total, "encoding") as bar: bar.advance()``; redraws at most 10 times a second."""

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self._enabled and (now - self._drawn >= 0.1 or self.done == self.total):
            self._drawn = now
            self._draw(note)

    def _draw(self, note: str) -> None:
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            width = 30
            filled = int(width * min(self.done, self.total) / self.total)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r{self.label} [{bar}] {self.done}/{self.total} {rate:.1f}/s {note}"
        else:
            text = f"\r{self.label} {self.done} {rate:.1f}/s {note}"
        self._stream.write(text[:150].ljust(80))
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()
