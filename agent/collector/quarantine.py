"""Keeping rejected messages for inspection, under names the collector makes up.

Nothing a publisher controls reaches a path: the file name is a UTC timestamp, a counter and one of the
fixed reason slugs below. The topic (as ``repr``, so control characters stay visible) and the reason go in a
JSON sidecar. Files are fsynced before the message is acknowledged, like archived records, so that what
the broker forgets is on disk. The folder is capped: past ``max_bytes`` payloads are counted and logged
but no longer kept, so a flood of garbage cannot fill the archive's disk.
"""

from __future__ import annotations

import json
import logging
import time
from enum import Enum
from pathlib import Path

from agent.durable import fsync_dir, write_synced
from agent.errors import ArchiveError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1024**3


class Reason(Enum):
    """Why a message was not archived; the value is the slug used in file names."""

    TOPIC = "topic"
    """The topic is not ``{prefix}/{site}/{camera}/frame`` with valid ids."""
    MALFORMED = "malformed"
    """Neither a valid record nor a valid chunk (magic, sizes, checksum, reassembly)."""
    CAMERA_MISMATCH = "camera-mismatch"
    """The record names another camera than its topic."""
    REJECTED = "rejected"
    """The archive refused it (a different record under a seq it already holds, a hostile id)."""


class Quarantine:
    """A folder of rejected messages, ``<UTC time>-<counter>-<reason>.bin`` plus ``.json``."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.kept = 0
        self.skipped = 0
        """Messages counted but not kept because the folder was full."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._bytes = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        except OSError as e:
            raise ArchiveError(f"quarantine {directory}: cannot create or read it: {e}") from e
        self._counter = 0
        self._dirty = False

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def keep(self, payload: bytes, topic: str, reason: Reason, detail: str) -> Path | None:
        """Write ``payload`` and its sidecar durably; the ``.bin`` path, or None when over the cap."""
        sidecar = json.dumps(
            {
                "topic": topic,
                "reason": reason.value,
                "detail": detail,
                "bytes": len(payload),
                "received_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            ensure_ascii=True,
            indent=1,
        ).encode()
        if self._bytes + len(payload) + len(sidecar) > self.max_bytes:
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 1000 == 0:
                log.warning(
                    "quarantine %s is full (%d bytes, cap %d): %d rejected messages not kept",
                    self.directory, self._bytes, self.max_bytes, self.skipped,
                )  # fmt: skip
            return None
        path = self._write_new(payload, reason)
        try:
            write_synced(path.with_suffix(".json"), sidecar, exclusive=True)
        except OSError as e:
            raise ArchiveError(f"quarantine {self.directory}: cannot write {path.name}: {e}") from e
        self._bytes += len(payload) + len(sidecar)
        self._dirty = True
        self.kept += 1
        return path

    def _write_new(self, payload: bytes, reason: Reason) -> Path:
        """A fresh ``.bin`` holding ``payload``; names taken by an earlier run are skipped, never reused."""
        for _ in range(1000):
            self._counter += 1
            now = time.time()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
            path = self.directory / f"{stamp}-{self._counter:06d}-{reason.value}.bin"
            try:
                write_synced(path, payload, exclusive=True)
            except FileExistsError:
                continue
            except OSError as e:
                raise ArchiveError(f"quarantine {self.directory}: cannot write {path.name}: {e}") from e
            return path
        raise ArchiveError(f"quarantine {self.directory}: no free file name after 1000 tries")

    def sync(self) -> None:
        """Make the new directory entries durable (once per batch, not once per file)."""
        if not self._dirty:
            return
        try:
            fsync_dir(self.directory)
        except OSError as e:
            raise ArchiveError(f"quarantine {self.directory}: cannot fsync: {e}") from e
        self._dirty = False
