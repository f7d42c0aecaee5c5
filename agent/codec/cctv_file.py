"""A ``.cctv`` file: wire records back to back, nothing between them (what ``encode`` writes, ``decode`` reads).

Nothing in such a file but the records says where one ends, which is why reading a damaged one needs more than
reading a record (:func:`scan_records`); the layout is in ``docs/wire-format.md``, "A damaged .cctv file".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from agent.codec.crc import PrefixCrc
from agent.codec.wire import (
    CRC_SIZE,
    DEFAULT_LIMITS,
    FIXED_SIZE,
    MAGIC,
    MAX_CAMERA_ID,
    MAX_STAGES,
    Limits,
    Record,
    _check,
    record_length,
    unpack_header,
    unpack_record,
)
from agent.errors import WireFormatError


def _check_length(total: int, limits: Limits) -> None:
    bound = FIXED_SIZE + 1 + MAX_CAMERA_ID + MAX_STAGES + CRC_SIZE
    _check(
        total <= bound + limits.max_payload(limits.max_frame_bytes * 4 // 3, limits.max_height * 4),
        "record too big",
    )


def iter_records(stream: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> Iterator[Record]:
    """Read a ``.cctv`` file: records concatenated back to back, nothing between them."""
    while True:
        prefix = stream.read(FIXED_SIZE)
        if not prefix:
            return
        total = record_length(prefix)
        _check_length(total, limits)
        rest = stream.read(total - len(prefix))
        _check(
            len(rest) == total - len(prefix),
            f"truncated record at end of file ({len(prefix) + len(rest)} bytes)",
        )
        yield unpack_record(prefix + rest, limits)


class Searchable(Protocol):
    """What :func:`scan_records` reads: ``bytes`` or a read-only ``mmap`` of a file."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., /) -> int: ...


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of a ``.cctv`` file that hold no valid record: where, how many, and why the first one failed."""

    offset: int
    length: int
    reason: str


def scan_records(data: Searchable, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, Record] | Damage]:
    """Read records back to back as :func:`iter_records` does, but step over damage instead of stopping.

    Yields ``(offset, record)`` for every valid record and one :class:`Damage` for each stretch of bytes
    between them that holds none (a corrupted record, garbage, a truncated tail). Why: one flipped bit should
    cost the frames that depend on its record, not every frame after it in the file. A corrupted length
    field makes the record's own end unknowable, so the scan goes on at the next magic from which a whole
    record parses and checks its CRC; the CRC makes a false start inside a payload as good as impossible.

    A candidate's CRC is checked from stored prefix CRCs (:class:`agent.codec.crc.PrefixCrc`) and its header
    parsed before any of its payload is read, so a candidate costs the same whatever length it declares: the
    scan reads the file a bounded number of times even when it is full of headers that each claim the rest of
    it (reading each candidate whole made that quadratic: 77 s for 4 MB).
    """
    pos, end = 0, len(data)
    crcs = PrefixCrc(data)
    while pos < end:
        try:
            record, length = _record_at(data, pos, limits, crcs)
        except WireFormatError as e:
            start = pos
            pos = _next_record(data, pos + 1, limits, crcs)
            yield Damage(start, pos - start, str(e))
            continue
        yield pos, record
        pos += length


def _record_at(data: Searchable, pos: int, limits: Limits, crcs: PrefixCrc) -> tuple[Record, int]:
    """The record at pos and its length; its CRC and header are checked before its payload is read (what
    :func:`unpack_record` checks, in its order, without reading the record twice)."""
    prefix = data[pos : pos + FIXED_SIZE]
    total = record_length(prefix)
    _check_length(total, limits)
    _check(
        pos + total <= len(data),
        f"truncated record: it declares {total} bytes, the file ends after {len(data) - pos}",
    )
    crc_at = pos + total - CRC_SIZE
    stored = int.from_bytes(data[crc_at : crc_at + CRC_SIZE], "little")
    _check(crcs.crc(pos, crc_at) == stored, "checksum mismatch: record is corrupted")
    header_length = int.from_bytes(prefix[8:10], "little")
    header = unpack_header(data[pos : pos + header_length], limits)
    return Record(header, data[pos + header_length : crc_at]), total


def _next_record(data: Searchable, pos: int, limits: Limits, crcs: PrefixCrc) -> int:
    """Offset of the first valid record at or after pos, or the end of the data."""
    while (pos := data.find(MAGIC, pos)) != -1:
        try:
            _record_at(data, pos, limits, crcs)
        except WireFormatError:
            pos += 1
            continue
        return pos
    return len(data)
