"""Chunks of records not yet complete, kept on disk so that they can be acknowledged before the rest comes.

Why: a chunk held only in memory could not be acknowledged (a crash would lose it, and the agent forgets
whatever the broker acknowledged), but holding its acknowledgement back stalls delivery: the broker sends
at most Receive Maximum unacknowledged messages (Mosquitto's default: 20), fewer than a large record's
chunks. So each chunk is written and fsynced here, acknowledged, and deleted once its record is archived.
At start the collector feeds what is left back into its reassembler.

File names are ``<sha256(topic)[:32]>-<seq>-<index>.chunk``: made by the collector, hashed from the topic,
never the topic itself. A file holds ``u16 topic length | topic (UTF-8) | the chunk message``. Memory and
disk stay bounded like the reassembler's: the record fed least recently is forgotten first.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.durable import fsync_dir, write_synced
from agent.errors import ArchiveError, WireFormatError
from agent.transport.chunks import parse_chunk

log = logging.getLogger(__name__)

SUFFIX = ".chunk"
_TOPIC_LENGTH = struct.Struct("<H")
MAX_AGE_S = 7 * 24 * 3600
"""Chunks of records that never completed are deleted after this long."""


@dataclass
class _Staged:
    paths: list[Path] = field(default_factory=list)
    size: int = 0


class ChunkStaging:
    """A directory of chunk files, indexed by (topic, record seq)."""

    def __init__(self, directory: Path, *, max_records: int = 64, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._staged: OrderedDict[tuple[str, int], _Staged] = OrderedDict()
        self._bytes = 0
        self._dirty = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ArchiveError(f"chunk staging {directory}: cannot create it: {e}") from e

    @property
    def records(self) -> int:
        return len(self._staged)

    def put(self, topic: str, payload: bytes) -> None:
        """Write one chunk (already checked by the reassembler) and fsync it; ``sync`` makes it visible."""
        header, _ = parse_chunk(payload)
        key = (topic, header.seq)
        path = self.directory / f"{_topic_hash(topic)}-{header.seq:020d}-{header.index:05d}{SUFFIX}"
        data = _TOPIC_LENGTH.pack(len(topic.encode())) + topic.encode() + payload
        try:
            tmp = path.with_suffix(".tmp")
            write_synced(tmp, data)
            tmp.replace(path)
        except OSError as e:
            raise ArchiveError(f"chunk staging {self.directory}: cannot write {path.name}: {e}") from e
        self._remember(key, path, len(data))
        self._dirty = True
        self._evict()

    def sync(self) -> None:
        """fsync the directory: call before acknowledging the chunks ``put`` since the last call."""
        if self._dirty:
            _fsync_dir(self.directory)
            self._dirty = False

    def discard(self, topic: str, seq: int) -> None:
        """Delete the chunks of a record now safely archived (or rejected)."""
        staged = self._staged.pop((topic, seq), None)
        if staged is None:
            return
        self._bytes -= staged.size
        for path in staged.paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("chunk staging: cannot delete %s: %s", path, e)

    def load(self) -> Iterator[tuple[str, bytes]]:
        """``(topic, chunk)`` for every chunk a previous run left, oldest first; stale and torn files go."""
        now = time.time()
        try:
            paths = sorted(self.directory.iterdir(), key=lambda p: p.stat().st_mtime)
        except OSError as e:
            raise ArchiveError(f"chunk staging {self.directory}: cannot list it: {e}") from e
        for path in paths:
            if path.suffix != SUFFIX:
                if path.suffix == ".tmp":  # torn write of a chunk that was never acknowledged
                    path.unlink(missing_ok=True)
                continue
            try:
                if now - path.stat().st_mtime > MAX_AGE_S:
                    log.info("chunk staging: deleting %s, older than %d s", path.name, MAX_AGE_S)
                    path.unlink()
                    continue
                data = path.read_bytes()
                (length,) = _TOPIC_LENGTH.unpack_from(data)
                topic = data[_TOPIC_LENGTH.size : _TOPIC_LENGTH.size + length].decode("utf-8")
                payload = data[_TOPIC_LENGTH.size + length :]
                header, _ = parse_chunk(payload)
            except OSError as e:
                raise ArchiveError(f"chunk staging {self.directory}: cannot read {path.name}: {e}") from e
            except (ValueError, struct.error, WireFormatError) as e:
                log.warning("chunk staging: deleting unreadable %s: %s", path.name, e)
                path.unlink(missing_ok=True)
                continue
            self._remember((topic, header.seq), path, len(data))
            yield topic, payload
        self._evict()

    def _remember(self, key: tuple[str, int], path: Path, size: int) -> None:
        staged = self._staged.setdefault(key, _Staged())
        if path not in staged.paths:
            staged.paths.append(path)
            staged.size += size
            self._bytes += size
        self._staged.move_to_end(key)

    def _evict(self) -> None:
        # the same policy as the reassembler: it has given up on these records too
        while len(self._staged) > 1 and (
            len(self._staged) > self.max_records or self._bytes > self.max_bytes
        ):
            topic, seq = next(iter(self._staged))
            log.warning("chunk staging: dropping incomplete record %r seq=%d to bound disk use", topic, seq)
            self.discard(topic, seq)


def _topic_hash(topic: str) -> str:
    return hashlib.sha256(topic.encode()).hexdigest()[:32]


def _fsync_dir(directory: Path) -> None:
    try:
        fsync_dir(directory)
    except OSError as e:
        raise ArchiveError(f"chunk staging {directory}: cannot fsync: {e}") from e
