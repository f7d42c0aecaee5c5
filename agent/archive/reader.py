"""Getting frames back: committed index rows, their bytes from the segments, and chains decoded from their key.

Readers never write and never repair: they see exactly what the writer has committed (the index only ever
names bytes that were fsynced first), so they can run while the collector is storing. Each frame is decoded
with :func:`agent.codec.decoder.reconstruct`, which checks the record's frame hash.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np
import numpy.typing as npt

from agent.archive.paths import INDEX_FILE, camera_dir, check_version, find_cameras, segment_path, validate_id
from agent.codec.decoder import reconstruct
from agent.codec.transforms import Planes
from agent.codec.wire import Kind, Record, RecordHeader, unpack_record
from agent.errors import ArchiveError, CctvError

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
TimeBound = datetime | int | None
"""A UTC datetime (naive means UTC), or ns since 1970-01-01, or no bound."""

ROW_COLUMNS = (
    "seq, capture_time_ns, kind, key_seq, ref_seq, day, segment, offset, size, frame_hash, raw_size, "
    "decodable"
)
_CACHE_FRAMES = 8


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One record as the index knows it: where its bytes are and how it hangs on its group."""

    seq: int
    capture_time_ns: int
    kind: Kind
    key_seq: int
    ref_seq: int
    day: str
    segment: int
    offset: int
    size: int
    frame_hash: bytes
    raw_size: int
    decodable: bool

    @classmethod
    def from_sql(cls, row: tuple[Any, ...]) -> IndexRow:
        seq, t, kind, key_seq, ref_seq, day, segment, offset, size, digest, raw, decodable = row
        return cls(
            int(seq),
            int(t),
            Kind(kind),
            int(key_seq),
            int(ref_seq),
            str(day),
            int(segment),
            int(offset),
            int(size),
            bytes(digest),
            int(raw),
            bool(decodable),
        )

    @property
    def where(self) -> str:
        return f"{self.day}/segment-{self.segment:06d} @ {self.offset}"


def connect(index: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), waiting politely for the writer."""
    try:
        conn = sqlite3.connect(index, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout = 10000")
    except sqlite3.Error as e:
        raise ArchiveError(f"index {index}: cannot open: {e}") from e
    return conn


def to_ns(bound: TimeBound) -> int | None:
    if bound is None or isinstance(bound, int):
        return bound
    if bound.tzinfo is None:
        bound = bound.replace(tzinfo=UTC)
    return int(bound.timestamp()) * 1_000_000_000 + bound.microsecond * 1000


def resolve_site(root: Path, camera: str, site: str | None) -> str:
    """The site of ``camera``: the given one, or the only one holding it."""
    check_version(root, create=False)  # "not an archive" says more than "no camera" about a wrong root
    validate_id("camera", camera)
    if site is not None:
        return validate_id("site", site)
    sites = [s for s, c in find_cameras(root) if c == camera]
    if not sites:
        raise ArchiveError(f"archive {root}: no camera {camera!r}")
    if len(sites) > 1:
        raise ArchiveError(f"archive {root}: camera {camera!r} exists at several sites {sites}: name one")
    return sites[0]


class CameraReader:
    """The read side of one camera: index rows and the record bytes they point to."""

    def __init__(self, root: Path, site: str, camera: str) -> None:
        check_version(root, create=False)
        self.site, self.camera = site, camera
        self.directory = camera_dir(root, site, camera)
        index = self.directory / INDEX_FILE
        if not index.is_file():
            if any(self.directory.glob("*/segment-*.cctv")):
                raise ArchiveError(
                    f"archive {root}: camera {camera!r} at site {site!r} has segments but no index "
                    "(a writer opening it rebuilds the index)"
                )
            raise ArchiveError(f"archive {root}: no camera {camera!r} at site {site!r}")
        self.conn = connect(index)
        self.conn.execute("PRAGMA query_only = 1")
        self._files: dict[tuple[str, int], BinaryIO] = {}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self.conn.close()

    def __enter__(self) -> CameraReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[IndexRow]:
        """Rows with start ≤ capture time < end, in seq order."""
        lo = -(2**63) if start_ns is None else start_ns
        hi = 2**63 - 1 if end_ns is None else end_ns
        cursor = self.conn.execute(
            f"SELECT {ROW_COLUMNS} FROM records "  # noqa: S608 - a constant column list, values bound
            "WHERE capture_time_ns >= ? AND capture_time_ns < ? ORDER BY seq",
            (lo, hi),
        )
        for row in cursor:
            yield IndexRow.from_sql(row)

    def row(self, seq: int) -> IndexRow | None:
        query = f"SELECT {ROW_COLUMNS} FROM records WHERE seq = ?"  # noqa: S608 - constant column list
        found = self.conn.execute(query, (seq,)).fetchone()
        return None if found is None else IndexRow.from_sql(found)

    def read_bytes(self, row: IndexRow) -> bytes:
        key = (row.day, row.segment)
        f = self._files.get(key)
        path = segment_path(self.directory, row.day, row.segment)
        try:
            if f is None:
                f = self._files[key] = path.open("rb")
            f.seek(row.offset)
            data = f.read(row.size)
        except OSError as e:
            raise ArchiveError(f"camera {self.camera!r} seq={row.seq}: cannot read {path}: {e}") from e
        if len(data) != row.size:
            raise ArchiveError(
                f"camera {self.camera!r} seq={row.seq}: {path} ends before the record ({row.where}, {row.size} bytes)"
            )
        return data

    def read(self, row: IndexRow) -> Record:
        """The record a row names, checked against what the index says about it."""
        try:
            record = unpack_record(self.read_bytes(row))
        except CctvError as e:
            raise ArchiveError(f"camera {self.camera!r} seq={row.seq}: {e} (at {row.where})") from e
        h = record.header
        if h.seq != row.seq or h.camera_id != self.camera or h.frame_hash != row.frame_hash:
            raise ArchiveError(
                f"camera {self.camera!r} seq={row.seq}: {row.where} holds camera {h.camera_id!r} seq={h.seq}, "
                "not what the index names"
            )
        return record


@dataclass(frozen=True, slots=True)
class Decoded:
    """One row's fate: its frame, or why there is none."""

    row: IndexRow
    header: RecordHeader | None
    image: Image | None
    problem: str | None


class Reconstructor:
    """Decodes rows in seq order, each from its chain back to a self-contained record.

    Keeps a few recent frames: members reference their key or the previous frame, so consecutive rows
    reuse what was just decoded. A failure is remembered so every dependant fails fast with the cause.
    """

    def __init__(self, reader: CameraReader) -> None:
        self._reader = reader
        self._cache: OrderedDict[int, tuple[RecordHeader, Planes]] = OrderedDict()
        self._failed: dict[int, str] = {}

    def decode(self, row: IndexRow) -> Decoded:
        try:
            header, image = self._frame(row)
        except _ChainBroken as e:
            return Decoded(row, None, None, str(e))
        return Decoded(row, header, image, None)

    def _frame(self, row: IndexRow) -> tuple[RecordHeader, Image]:
        chain = [row]
        while chain[-1].ref_seq != chain[-1].seq and chain[-1].ref_seq not in self._cache:
            ref = chain[-1].ref_seq
            if ref in self._failed:
                break
            ref_row = self._reader.row(ref)
            if ref_row is None:
                self._fail(chain, f"reference seq={ref} is not in the archive")
            chain.append(ref_row)
        image: Image | None = None
        for link in reversed(chain):
            if link.seq in self._failed:
                raise _ChainBroken(self._failed[link.seq])
            if link.ref_seq != link.seq and link.ref_seq in self._failed:
                self._fail([link], f"reference seq={link.ref_seq} cannot be decoded")
            reference = None if link.ref_seq == link.seq else self._cache[link.ref_seq][1]
            try:
                record = self._reader.read(link)
                image, planes = reconstruct(record, reference)
            except CctvError as e:
                self._fail([link], str(e))
            self._remember(link.seq, record.header, planes)
        assert image is not None  # the chain starts at the row itself, decoded last
        return self._cache[row.seq][0], image

    def _remember(self, seq: int, header: RecordHeader, planes: Planes) -> None:
        """Keep what a record referencing this frame needs (``decoder.reconstruct``), not the frame itself."""
        self._cache[seq] = (header, planes)
        self._cache.move_to_end(seq)
        while len(self._cache) > _CACHE_FRAMES:
            self._cache.popitem(last=False)

    def _fail(self, links: list[IndexRow], reason: str) -> NoReturn:
        for link in links:
            self._failed[link.seq] = reason
        raise _ChainBroken(reason)


class _ChainBroken(Exception):
    pass


def iter_frames(
    root: Path, camera: str, site: str | None = None, start: TimeBound = None, end: TimeBound = None
) -> Iterator[tuple[RecordHeader, Image]]:
    """Frames of ``camera`` captured in [start, end), in seq order, each verified against its frame hash.

    Frames before ``start`` that the first ones need are decoded but not yielded; a record that cannot be
    decoded (its reference never arrived, or its bytes are damaged) is skipped with a warning.
    """
    root = Path(root)
    with CameraReader(root, resolve_site(root, camera, site), camera) as reader:
        reconstructor = Reconstructor(reader)
        for row in reader.rows(to_ns(start), to_ns(end)):
            if not row.decodable:
                log.warning("camera %r seq=%d: skipped, its reference chain is incomplete", camera, row.seq)
                continue
            decoded = reconstructor.decode(row)
            if decoded.image is None or decoded.header is None:
                log.warning("camera %r seq=%d: skipped: %s", camera, row.seq, decoded.problem)
                continue
            yield decoded.header, decoded.image
