"""The store-and-forward queue: every record is on disk before it is published and leaves only on PUBACK.

Bounded by ``max_bytes`` and by the disk itself; when either is reached, whole key groups are evicted, oldest
first, so that no member is ever kept without the record it refers to. Design and reasons: ``docs/spool.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.errors import SpoolError
from agent.spool.entry import SpoolEntry
from agent.spool.files import (
    FILE_MODE,
    HEADER_SIZE,
    BadRecordFile,
    atomic_write,
    encode_header,
    read_data,
    read_json,
    record_name,
    scan,
    unlink_quietly,
)

log = logging.getLogger(__name__)

_STATE_FILE = "state.json"
_COUNTERS_FILE = "counters.json"
_LOCK_FILE = ".lock"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_COUNTERS = ("evicted_records", "evicted_groups", "refused_records", "dropped_records")


@dataclass(frozen=True, slots=True)
class _Held:
    seq: int
    key_seq: int
    size: int


class Spool:
    """A directory of record files, one per record, replayed in seq order.

    Threads: the capture/encode thread calls :meth:`put` and :meth:`save_state`; the publisher thread calls
    :meth:`peek` and :meth:`ack`. ``_lock`` guards the in-memory index, the counters and the set of files
    under their final names. It is held across a put's fsync, so the publisher waits for at most one record
    write; :meth:`peek` reads payloads outside it and skips a record that was acknowledged or evicted
    meanwhile. One process at a time: an ``flock`` on ``.lock`` refuses a second opener.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= HEADER_SIZE:
            raise SpoolError(f"spool {directory}: max_bytes={max_bytes} leaves no room for any record")
        self._dir = directory
        self._max_bytes = max_bytes
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = self._lock_directory()
        except OSError as e:
            raise SpoolError(f"spool {directory}: cannot open: {e.strerror or e}") from e
        self._lock = threading.Lock()
        self._seqs: list[int] = []  # ascending: replay order
        self._held: dict[int, _Held] = {}
        self._groups: dict[int, list[int]] = {}  # key_seq -> held seqs of that group, ascending
        self._bytes_used = 0
        self._last_seq: int | None = None
        # Members may only join the group of the latest key, and only while none of it was lost.
        self._open_group: int | None = None
        self._open_group_intact = False
        self._needs_key = False
        self._closed = False
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._saved_totals = self._load_counters()
        try:
            self._repair()
        except BaseException:
            os.close(self._lock_fd)  # else this process keeps the directory locked
            raise

    # ---- public API -------------------------------------------------------------------------------

    def put(self, entry: SpoolEntry) -> None:
        """Store ``entry``; once this returns it survives a crash or a power cut.

        Raises :class:`SpoolError` if it cannot be stored (too big, disk full with nothing left to evict, or a
        member whose group already lost a record). The caller counts the frame as lost and makes its next
        frame a key; :meth:`needs_key` says so too.
        """
        with self._lock:
            self._check_open()
            if self._last_seq is not None and entry.seq <= self._last_seq:
                raise SpoolError(f"spool {self._dir}: seq={entry.seq} is not after last seq={self._last_seq}")
            path = self._dir / record_name(entry.seq)
            try:
                if not entry.is_key:
                    self._check_member(entry)
                self._make_room(entry)
                self._write_evicting(
                    path,
                    (encode_header(entry.seq, entry.key_seq, entry.is_key, entry.data), entry.data),
                    spare=entry.key_seq,
                    what=f"record seq={entry.seq}",
                )
            except SpoolError:
                unlink_quietly(path)  # in case the rename happened but the directory fsync failed
                self._counts["refused_records"] += 1
                self._needs_key = True
                if entry.is_key or entry.key_seq == self._open_group:
                    self._open_group, self._open_group_intact = entry.key_seq, False
                self._save_counters()
                raise
            self._index(_Held(entry.seq, entry.key_seq, entry.size))
            self._last_seq = entry.seq
            if entry.is_key:
                self._open_group, self._open_group_intact = entry.seq, True
                self._needs_key = False

    def peek(self, limit: int = 100, after: int | None = None) -> list[SpoolEntry]:
        """Up to ``limit`` of the oldest entries (with seq > ``after`` if given), in seq order, not removed.

        ``after`` lets a publisher with records in flight ask for the next ones without re-reading those.
        A record found corrupt is dropped with the later records of its group, and the list stops before it.
        """
        with self._lock:
            self._check_open()
            start = 0 if after is None else bisect.bisect_right(self._seqs, after)
            wanted = self._seqs[start : start + max(limit, 0)]
        entries: list[SpoolEntry] = []
        for seq in wanted:
            path = self._dir / record_name(seq)
            try:
                header, data = read_data(path)
                if header.seq != seq:
                    raise BadRecordFile(f"{path}: header says seq={header.seq}")
            except FileNotFoundError:
                continue  # acknowledged or evicted since the snapshot above
            except BadRecordFile as e:
                self._drop_corrupt(seq, str(e))
                break
            except OSError as e:
                raise SpoolError(f"spool {self._dir}: cannot read record seq={seq}: {e.strerror or e}") from e
            entries.append(SpoolEntry(header.seq, header.key_seq, header.is_key, data))
        return entries

    def ack(self, seq: int) -> None:
        """Forget a record the broker acknowledged; an unknown seq is a no-op.

        No directory fsync: if the unlink is lost in a crash the record is sent again, and the collector
        de-duplicates by (camera, seq). That keeps an ack cheap.
        """
        with self._lock:
            self._check_open()
            if seq in self._held:
                self._forget(seq)

    def needs_key(self) -> bool:
        """True after a record was evicted, dropped or refused, until a key entry is stored."""
        with self._lock:
            return self._needs_key

    def __len__(self) -> int:
        with self._lock:
            return len(self._seqs)

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._bytes_used

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def last_seq(self) -> int | None:
        """Highest seq stored since open or found on disk at open: a floor for the agent's next seq."""
        with self._lock:
            return self._last_seq

    @property
    def evicted_records(self) -> int:
        with self._lock:
            return self._counts["evicted_records"]

    @property
    def evicted_groups(self) -> int:
        with self._lock:
            return self._counts["evicted_groups"]

    def counters(self) -> dict[str, int]:
        """Since open: ``evicted_records``, ``evicted_groups``, ``refused_records`` (puts that raised) and
        ``dropped_records`` (found torn or corrupt, with the later members that needed them)."""
        with self._lock:
            return dict(self._counts)

    def totals(self) -> dict[str, int]:
        """The counters over the spool's whole life, persisted in ``counters.json``."""
        with self._lock:
            return {name: self._saved_totals[name] + self._counts[name] for name in _COUNTERS}

    def load_state(self) -> dict[str, Any]:
        """The small JSON object last given to :meth:`save_state` (``{}`` if none, or if unreadable)."""
        path = self._dir / _STATE_FILE
        try:
            state = read_json(path)
        except ValueError as e:
            log.error("spool %s: ignoring unreadable %s: %s", self._dir, path.name, e)
            return {}
        except OSError as e:
            raise SpoolError(f"spool {self._dir}: cannot read {path.name}: {e.strerror or e}") from e
        if state is not None and not isinstance(state, dict):
            log.error("spool %s: ignoring %s: not a JSON object", self._dir, path.name)
        return state if isinstance(state, dict) else {}

    def save_state(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` atomically and durably; on a full disk, evict old groups to make room."""
        try:
            blob = json.dumps(dict(state), sort_keys=True).encode()
        except (TypeError, ValueError) as e:
            raise SpoolError(f"spool {self._dir}: state is not JSON: {e}") from e
        with self._lock:
            self._check_open()
            self._write_evicting(self._dir / _STATE_FILE, (blob,), spare=self._open_group, what="state")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- internals (called with _lock held, except during __init__) ---------------------------------

    def _lock_directory(self) -> int:
        fd = os.open(self._dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise SpoolError(f"spool {self._dir}: already open (by another process or Spool object)") from e
        return fd

    def _repair(self) -> None:
        """Index what survived; drop what a crash (or the disk) left broken, and say so in the log.

        A torn record is dropped with every later record of its group (any later record whose group started
        at or before it), since those refer to it, directly or through it.
        """
        try:
            found, bad = scan(self._dir)
        except OSError as e:
            raise SpoolError(f"spool {self._dir}: cannot scan: {e.strerror or e}") from e
        orphans = 0
        for header in found:
            held = _Held(header.seq, header.key_seq, header.file_size)
            if any(held.key_seq <= lost < held.seq for lost in bad):
                log.warning("spool %s: dropping seq=%d: it depends on a dropped record", self._dir, held.seq)
                unlink_quietly(self._dir / record_name(held.seq))
                orphans += 1
            else:
                self._index(held)
        self._last_seq = max((h.seq for h in found), default=None)
        if bad:
            self._last_seq = max(self._last_seq or 0, *bad)
        if self._seqs:
            self._open_group = self._held[self._seqs[-1]].key_seq
            self._open_group_intact = not bad
        if bad:
            self._counts["dropped_records"] = len(bad) + orphans
            self._needs_key = True
            self._save_counters()
        log.info(
            "spool %s: opened with %d records, %d bytes (cap %d); dropped %d",
            self._dir,
            len(self._seqs),
            self._bytes_used,
            self._max_bytes,
            len(bad) + orphans,
        )

    def _check_member(self, entry: SpoolEntry) -> None:
        if entry.key_seq == self._open_group and self._open_group_intact:
            return
        why = (
            "its group lost a record (evicted, dropped or not stored)"
            if entry.key_seq == self._open_group
            else f"only members of the latest key group (key_seq={self._open_group}) are accepted"
        )
        raise SpoolError(
            f"spool {self._dir}: member seq={entry.seq} of key_seq={entry.key_seq} refused: {why}; "
            "the next frame must be a key"
        )

    def _make_room(self, entry: SpoolEntry) -> None:
        """Evict other groups, oldest first, until ``entry`` fits under ``max_bytes``; nothing in vain."""
        own = sum(self._held[seq].size for seq in self._groups.get(entry.key_seq, ()))
        if own + entry.size > self._max_bytes:
            beside = f" beside the {own} bytes of its own group" if own else ""
            raise SpoolError(
                f"spool {self._dir}: record seq={entry.seq} of {entry.size} bytes does not fit{beside} "
                f"under max_bytes={self._max_bytes}"
            )
        while self._bytes_used + entry.size > self._max_bytes:
            if not self._evict_oldest(spare=entry.key_seq):  # cannot happen: the excess is another group's
                raise SpoolError(f"spool {self._dir}: no group left to evict for record seq={entry.seq}")

    def _write_evicting(self, path: Path, chunks: tuple[bytes, ...], spare: int | None, what: str) -> None:
        """Write atomically; on a full disk evict the oldest group other than ``spare`` and try again."""
        while True:
            try:
                atomic_write(path, *chunks)
                return
            except OSError as e:
                if e.errno not in _DISK_FULL:
                    raise SpoolError(f"spool {self._dir}: cannot write {what}: {e.strerror or e}") from e
                log.warning("spool %s: disk full writing %s", self._dir, what)
                if not self._evict_oldest(spare=spare):
                    raise SpoolError(
                        f"spool {self._dir}: disk full writing {what} and no other key group left to evict"
                    ) from e

    def _evict_oldest(self, spare: int | None) -> bool:
        victims = [key_seq for key_seq in self._groups if key_seq != spare]
        if not victims:
            return False
        key_seq = min(victims)
        seqs = list(self._groups[key_seq])
        freed = sum(self._forget(seq) for seq in seqs)
        self._counts["evicted_groups"] += 1
        self._counts["evicted_records"] += len(seqs)
        if key_seq == self._open_group:
            self._open_group_intact = False
        self._needs_key = True
        log.warning(
            "spool %s: evicted key group %d (%d records, %d bytes) to make room",
            self._dir,
            key_seq,
            len(seqs),
            freed,
        )
        self._save_counters()
        return True

    def _drop_corrupt(self, seq: int, why: str) -> None:
        with self._lock:
            held = self._held.get(seq)
            if held is None:
                return
            doomed = [s for s in self._groups[held.key_seq] if s >= seq]
            for s in doomed:
                self._forget(s)
            self._counts["dropped_records"] += len(doomed)
            if held.key_seq == self._open_group:
                self._open_group_intact = False
            self._needs_key = True
            log.error(
                "spool %s: %s: dropped it and the %d later records of its group",
                self._dir,
                why,
                len(doomed) - 1,
            )
            self._save_counters()

    def _index(self, held: _Held) -> None:
        bisect.insort(self._seqs, held.seq)
        self._held[held.seq] = held
        self._groups.setdefault(held.key_seq, []).append(held.seq)
        self._bytes_used += held.size

    def _forget(self, seq: int) -> int:
        held = self._held.pop(seq)
        del self._seqs[bisect.bisect_left(self._seqs, seq)]
        group = self._groups[held.key_seq]
        group.remove(seq)
        if not group:
            del self._groups[held.key_seq]
        self._bytes_used -= held.size
        unlink_quietly(self._dir / record_name(seq))
        return held.size

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self._dir}: closed")

    def _load_counters(self) -> dict[str, int]:
        with contextlib.suppress(OSError, ValueError, TypeError):
            saved = read_json(self._dir / _COUNTERS_FILE)
            if isinstance(saved, dict):
                return {name: int(saved.get(name, 0)) for name in _COUNTERS}
        return dict.fromkeys(_COUNTERS, 0)

    def _save_counters(self) -> None:
        """Best effort: a lost counter update is not worth failing a put for."""
        totals = {name: self._saved_totals[name] + self._counts[name] for name in _COUNTERS}
        try:
            atomic_write(self._dir / _COUNTERS_FILE, json.dumps(totals, sort_keys=True).encode())
        except OSError as e:
            log.warning("spool %s: cannot persist counters: %s", self._dir, e.strerror or e)
