"""Writes that survive a crash or power cut: the agent's spool, the collector's staging and quarantine, and
the archive all need the same two steps, so they live here once.

A file's data is durable after ``fsync`` on it; its name (create, rename, unlink) only after ``fsync`` on the
directory that holds it.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a write may be short, on a full pipe or a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_synced(path: Path, *chunks: bytes, mode: int = 0o640, exclusive: bool = False) -> None:
    """Create (or truncate) ``path``, write ``chunks``, fsync. ``exclusive`` refuses an existing file
    (``FileExistsError``): for names that must never replace what an earlier run kept."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
