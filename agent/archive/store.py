"""The writer: records appended verbatim to per-day segments, indexed in one SQLite database per camera.

The collector's API (keep it stable)::

    archive = Archive(root)                  # or Archive(root, autoflush=False) to batch fsyncs
    outcome = archive.store(data, site)      # StoreOutcome.STORED or .DUPLICATE
    archive.flush()                          # durable from here on (a no-op with autoflush)
    archive.close()

``store`` parses ``data`` with :func:`~agent.codec.wire.unpack_record` and lets its WireFormatError through
(the caller quarantines the bytes). A second copy of a stored (camera, seq) is a DUPLICATE if it is the same
bytes, and an ArchiveError (the first copy is kept) if it is not. With ``autoflush=True`` (the default) each
``store`` returns only once the record is durable; with ``autoflush=False`` records stored since the last
``flush`` may be lost in a crash, never anything flushed before.

Durability order: the segment bytes are written, then fsynced (and the directories holding new files), and
only then is the index transaction committed; so the index never names bytes that are not on disk. A crash
leaves at most a tail of unindexed bytes, which the next writer re-indexes (whole records) or truncates (a
partial one) when it opens the camera. Layout and reasons: ``docs/archive-format.md``.

Threads: an Archive is meant for one thread (the collector's). Its lock only makes a stray concurrent call
wait, it does not make interleaved batches meaningful. Processes: one writer per camera (an ``flock`` on
``.writer.lock`` refuses a second); readers (:mod:`agent.archive.reader`) may run at any time.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

from agent.archive.maintenance import RetentionResult, plan_retention
from agent.archive.paths import check_version, find_cameras, validate_id
from agent.archive.reader import resolve_site
from agent.archive.writer import CameraStore, StoreOutcome
from agent.codec.wire import unpack_record
from agent.errors import ArchiveError

log = logging.getLogger(__name__)

SEGMENT_MAX_BYTES = 256 * 1024 * 1024

__all__ = ["SEGMENT_MAX_BYTES", "Archive", "StoreOutcome"]


class Archive:
    """The data-centre archive under ``root``: see the module docstring for the collector's API."""

    def __init__(
        self, root: Path | str, *, segment_max_bytes: int = SEGMENT_MAX_BYTES, autoflush: bool = True
    ) -> None:
        if segment_max_bytes < 1:
            raise ArchiveError(f"archive {root}: segment_max_bytes must be ≥ 1, got {segment_max_bytes}")
        self.root = Path(root)
        self.autoflush = autoflush
        self._segment_max = segment_max_bytes
        self._cameras: dict[tuple[str, str], CameraStore] = {}
        self._lock = threading.Lock()
        try:
            check_version(self.root, create=True)
        except OSError as e:
            raise ArchiveError(f"archive {root}: cannot initialise: {e}") from e

    def store(self, record_bytes: bytes, site: str) -> StoreOutcome:
        """Store one record received from ``site``; WireFormatError if the bytes are not a valid record."""
        h = unpack_record(record_bytes).header
        validate_id("site", site)
        validate_id("camera", h.camera_id)
        with self._lock:
            key = (site, h.camera_id)
            try:
                camera = self._camera(key)
                outcome = camera.store(bytes(record_bytes), h)
                if self.autoflush:
                    camera.flush()
            except (OSError, sqlite3.Error) as e:
                self._abandon(key)
                raise ArchiveError(f"archive {self.root}: camera {h.camera_id!r} seq={h.seq}: {e}") from e
        return outcome

    def recover_all(self) -> int:
        """Open every camera under the root now, so each repairs its torn tail (else done at its first store)."""
        opened = 0
        with self._lock:
            for key in find_cameras(self.root, include_unindexed=True):
                try:
                    self._camera(key)
                except (OSError, sqlite3.Error) as e:
                    self._abandon(key)
                    raise ArchiveError(f"archive {self.root}: camera {key[1]!r}: cannot open: {e}") from e
                opened += 1
        return opened

    def flush(self) -> None:
        """Make everything stored so far durable."""
        with self._lock:
            for key, camera in list(self._cameras.items()):
                try:
                    camera.flush()
                except (OSError, sqlite3.Error) as e:
                    self._abandon(key)
                    raise ArchiveError(f"archive {self.root}: camera {key[1]!r}: flush failed: {e}") from e

    def apply_retention(
        self,
        camera: str,
        *,
        site: str | None = None,
        max_age_days: float | None = None,
        max_bytes: int | None = None,
        now_ns: int | None = None,
    ) -> RetentionResult:
        """Delete whole key groups, oldest first, older than ``max_age_days`` and beyond ``max_bytes``."""
        key = (resolve_site(self.root, camera, site), camera)
        with self._lock:
            try:
                store = self._camera(key)
                now = time.time_ns() if now_ns is None else now_ns
                groups = store.conn.execute(
                    "SELECT key_seq, MAX(capture_time_ns), SUM(size) FROM records GROUP BY key_seq ORDER BY key_seq"
                ).fetchall()
                pins = store.conn.execute(
                    "SELECT DISTINCT t.key_seq, r.key_seq FROM records r JOIN records t ON t.seq = r.ref_seq "
                    "WHERE r.ref_seq != r.seq AND t.key_seq != r.key_seq"
                ).fetchall()
                doomed = plan_retention(groups, pins, max_age_days, max_bytes, now)
                return store.delete_groups(doomed) if doomed else RetentionResult(0, 0, 0, 0)
            except (OSError, sqlite3.Error) as e:
                self._abandon(key)
                raise ArchiveError(f"archive {self.root}: camera {camera!r}: retention failed: {e}") from e

    def close(self) -> None:
        with self._lock:
            while self._cameras:
                _, camera = self._cameras.popitem()
                camera.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _camera(self, key: tuple[str, str]) -> CameraStore:
        camera = self._cameras.get(key)
        if camera is None:
            camera = self._cameras[key] = CameraStore(self.root, key[0], key[1], self._segment_max)
        return camera

    def _abandon(self, key: tuple[str, str]) -> None:
        camera = self._cameras.pop(key, None)
        if camera is not None:
            with contextlib.suppress(OSError, sqlite3.Error):
                camera.abandon()
