"""One camera's writer: appends records to its per-day segments, indexes them, repairs a torn tail at open.

Used only through :class:`agent.archive.store.Archive`, which owns the thread and error policy; the ordering
rules (data fsync before index commit, rows deleted before files) are explained in ``docs/archive-format.md``.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.archive.maintenance import RetentionResult
from agent.archive.paths import (
    INDEX_FILE,
    LOCK_FILE,
    camera_dir,
    inside,
    parse_segment,
    segment_path,
    utc_day,
)
from agent.archive.reader import connect
from agent.codec.wire import FIXED_SIZE, RecordHeader, record_length, unpack_record
from agent.durable import fsync_dir
from agent.errors import ArchiveError, CctvError

log = logging.getLogger(__name__)

_MAX_OPEN_SEGMENTS = 4
_MAX_SEQ = 2**63 - 1  # SQLite integers are signed 64-bit

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    capture_time_ns INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    key_seq INTEGER NOT NULL,
    ref_seq INTEGER NOT NULL,
    day TEXT NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    frame_hash BLOB NOT NULL,
    raw_size INTEGER NOT NULL,
    decodable INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_time ON records (capture_time_ns);
CREATE INDEX IF NOT EXISTS records_ref ON records (ref_seq);
CREATE INDEX IF NOT EXISTS records_key ON records (key_seq);
CREATE INDEX IF NOT EXISTS records_segment ON records (day, segment);
CREATE TABLE IF NOT EXISTS segments (
    day TEXT NOT NULL,
    number INTEGER NOT NULL,
    length INTEGER NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, number)
);
"""


class StoreOutcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class _Segment:
    day: str
    number: int
    fd: int
    size: int
    dirty: bool = False


class CameraStore:
    """One camera's segments and index, open for writing (holds the camera's writer lock)."""

    def __init__(self, root: Path, site: str, camera: str, segment_max_bytes: int) -> None:
        self.site, self.camera = site, camera
        self.directory = camera_dir(root, site, camera)
        self._root = root
        self._max = segment_max_bytes
        self._open: dict[str, _Segment] = {}  # day -> segment being appended to, least recently used first
        self._dirs_to_sync: set[Path] = set()
        self._in_tx = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self._lock_fd)
            raise ArchiveError(f"camera {camera!r} at site {site!r}: another process is writing it") from e
        self.conn = connect(self.directory / INDEX_FILE)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(SCHEMA)
        self._recover()

    # --- storing -------------------------------------------------------------------------------------

    def store(self, data: bytes, h: RecordHeader) -> StoreOutcome:
        if max(h.seq, h.key_seq, h.ref_seq) > _MAX_SEQ:
            raise ArchiveError(f"camera {self.camera!r}: seq={h.seq} is beyond what the index can hold")
        if self._is_duplicate(data, h):
            return StoreOutcome.DUPLICATE
        day = utc_day(h.capture_time_ns)
        segment = self._segment_for(day, len(data))
        offset = segment.size
        self._begin()
        _write_all(segment, data)
        self._index(h, day, segment.number, offset, len(data))
        self.conn.execute(
            "UPDATE segments SET length = ? WHERE day = ? AND number = ?", (segment.size, day, segment.number)
        )
        return StoreOutcome.STORED

    def _is_duplicate(self, data: bytes, h: RecordHeader) -> bool:
        found = self.conn.execute(
            "SELECT day, segment, offset, size, frame_hash FROM records WHERE seq = ?", (h.seq,)
        ).fetchone()
        if found is None:
            return False
        day, number, offset, size, digest = found
        stored = b""
        if size == len(data) and bytes(digest) == h.frame_hash:
            with segment_path(self.directory, day, number).open("rb") as f:
                f.seek(offset)
                stored = f.read(size)
        if stored != data:
            raise ArchiveError(
                f"camera {self.camera!r} at site {self.site!r}: seq={h.seq} arrived again with different "
                f"content (frame hash {h.frame_hash.hex()[:16]}…, stored {bytes(digest).hex()[:16]}…); "
                "keeping the first copy"
            )
        return True

    def _index(self, h: RecordHeader, day: str, number: int, offset: int, size: int) -> None:
        decodable = h.ref_seq == h.seq or self._flag(h.ref_seq)
        self.conn.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (h.seq, h.capture_time_ns, int(h.kind), h.key_seq, h.ref_seq, day, number, offset, size,
             h.frame_hash, h.frame_bytes, int(decodable)),
        )  # fmt: skip
        if decodable:
            self._propagate(h.seq)

    def _flag(self, seq: int) -> bool:
        found = self.conn.execute("SELECT decodable FROM records WHERE seq = ?", (seq,)).fetchone()
        return found is not None and bool(found[0])

    def _propagate(self, seq: int) -> None:
        """Mark decodable every waiting record whose chain ``seq`` just completed (forward, transitively)."""
        frontier = [seq]
        while frontier:
            ref = frontier.pop()
            waiting = [s for (s,) in self.conn.execute(
                "SELECT seq FROM records WHERE ref_seq = ? AND seq != ref_seq AND decodable = 0", (ref,)
            )]  # fmt: skip
            self.conn.executemany("UPDATE records SET decodable = 1 WHERE seq = ?", [(s,) for s in waiting])
            frontier.extend(waiting)

    def _segment_for(self, day: str, size: int) -> _Segment:
        segment = self._open.pop(day, None)
        if segment is None:
            found = self.conn.execute(
                "SELECT number, length, retired FROM segments WHERE day = ? ORDER BY number DESC LIMIT 1",
                (day,),
            ).fetchone()
            if found is not None and not found[2]:
                path = segment_path(self.directory, day, found[0])
                segment = _Segment(day, found[0], os.open(inside(self._root, path), os.O_WRONLY), found[1])
            else:
                segment = self._create(day, 1 if found is None else found[0] + 1)
        if segment.size > 0 and segment.size + size > self._max:
            self._close_segment(segment)
            segment = self._create(day, segment.number + 1)
        self._open[day] = segment
        while len(self._open) > _MAX_OPEN_SEGMENTS:
            self._close_segment(self._open.pop(next(iter(self._open))))
        return segment

    def _create(self, day: str, number: int) -> _Segment:
        path = segment_path(self.directory, day, number)
        if not path.parent.exists():
            path.parent.mkdir()
            self._dirs_to_sync.add(self.directory)
        fd = os.open(inside(self._root, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._dirs_to_sync.add(path.parent)
        self._begin()
        self.conn.execute("INSERT INTO segments (day, number, length) VALUES (?, ?, 0)", (day, number))
        return _Segment(day, number, fd, 0, dirty=True)

    def _close_segment(self, segment: _Segment) -> None:
        if segment.dirty:
            os.fsync(segment.fd)
        os.close(segment.fd)

    # --- durability ----------------------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def flush(self) -> None:
        """fsync the data, then commit the index that names it."""
        if not self._in_tx:
            return
        for segment in self._open.values():
            if segment.dirty:
                os.fsync(segment.fd)
                segment.dirty = False
        for directory in sorted(self._dirs_to_sync, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(directory)
        self._dirs_to_sync.clear()
        self.conn.execute("COMMIT")
        self._in_tx = False

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for segment in self._open.values():
                os.close(segment.fd)
            self._open.clear()
            self.conn.close()
            os.close(self._lock_fd)

    def abandon(self) -> None:
        """Give up after an I/O or index error: roll back; the next open re-indexes what reached the disk."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self._in_tx = False
        for segment in self._open.values():
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self._open.clear()
        self.conn.close()
        os.close(self._lock_fd)

    # --- recovery at open ----------------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish interrupted retirements, then index whole records past each segment's indexed length."""
        self._finish_retirement()
        known = {
            (d, n): length for d, n, length in self.conn.execute("SELECT day, number, length FROM segments")
        }
        on_disk = {}
        for path in sorted(self.directory.glob("*/segment-*.cctv")):
            parsed = parse_segment(path)
            if parsed is not None:
                on_disk[parsed] = path
        for day, number in known:
            if (day, number) not in on_disk:
                log.error("camera %r: segment %s/%06d is indexed but missing", self.camera, day, number)
        for (day, number), path in on_disk.items():
            size = path.stat().st_size
            length = known.get((day, number))
            if length is None:
                self._begin()
                self.conn.execute(
                    "INSERT INTO segments (day, number, length) VALUES (?, ?, 0)", (day, number)
                )
                length = 0
            if size < length:
                log.error(
                    "camera %r: %s is %d bytes, shorter than its indexed %d", self.camera, path, size, length
                )
            elif size > length:
                self._repair_tail(path, day, number, length, size)
        self.flush()

    def _repair_tail(self, path: Path, day: str, number: int, start: int, size: int) -> None:
        position, indexed = start, 0
        with path.open("r+b") as f:
            f.seek(start)
            while position < size:
                try:
                    prefix = f.read(FIXED_SIZE)
                    total = record_length(prefix)
                    data = prefix + f.read(max(0, min(total, size - position) - len(prefix)))
                    record = unpack_record(data)
                except CctvError as e:
                    log.warning("camera %r: %s: truncating %d torn bytes at %d (%s)",
                                self.camera, path, size - position, position, e)  # fmt: skip
                    f.truncate(position)
                    break
                h = record.header
                self._begin()
                if h.camera_id != self.camera or self._has(h.seq) or max(h.seq, h.key_seq) > _MAX_SEQ:
                    log.warning("camera %r: %s: unindexable record seq=%d at %d left in place",
                                self.camera, path, h.seq, position)  # fmt: skip
                else:
                    self._index(h, day, number, position, total)
                    indexed += 1
                position += total
            os.fsync(f.fileno())
        self._begin()
        self.conn.execute(
            "UPDATE segments SET length = ? WHERE day = ? AND number = ?", (position, day, number)
        )
        log.info("camera %r: %s: re-indexed %d records past byte %d", self.camera, path, indexed, start)

    def _has(self, seq: int) -> bool:
        return self.conn.execute("SELECT 1 FROM records WHERE seq = ?", (seq,)).fetchone() is not None

    # --- retention -----------------------------------------------------------------------------------

    def delete_groups(self, key_seqs: list[int]) -> RetentionResult:
        """Drop whole groups from the index, then the segments (and days) left without a record."""
        self.flush()
        self._begin()
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (key_seq INTEGER PRIMARY KEY)")
        self.conn.execute("DELETE FROM doomed")
        self.conn.executemany("INSERT OR IGNORE INTO doomed VALUES (?)", [(k,) for k in key_seqs])
        doomed = "key_seq IN (SELECT key_seq FROM doomed)"
        records, size = self.conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE {doomed}"  # noqa: S608 - constant text
        ).fetchone()
        self.conn.execute(f"DELETE FROM records WHERE {doomed}")  # noqa: S608
        self.conn.execute(
            "UPDATE segments SET retired = 1 WHERE NOT EXISTS "
            "(SELECT 1 FROM records r WHERE r.day = segments.day AND r.segment = segments.number)"
        )
        self.flush()  # the index forgets the records before any file goes, so none can come back at open
        segments = self._finish_retirement()
        return RetentionResult(len(key_seqs), int(records), int(size), segments)

    def _finish_retirement(self) -> int:
        retired = self.conn.execute("SELECT day, number FROM segments WHERE retired = 1").fetchall()
        for day, number in retired:
            segment = self._open.get(day)
            if segment is not None and segment.number == number:
                os.close(self._open.pop(day).fd)
            path = segment_path(self.directory, day, number)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only succeeds once the day is empty
        if retired:
            self._begin()
            self.conn.execute("DELETE FROM segments WHERE retired = 1")
            self.flush()
        return len(retired)


def _write_all(segment: _Segment, data: bytes) -> None:
    """Append at the segment's end; on failure cut back what was written so the tail stays clean."""
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            written += os.pwrite(segment.fd, view[written:], segment.size + written)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(segment.fd, segment.size)
        raise
    segment.size += written
    segment.dirty = True
