"""Splitting records too big for one MQTT message, and putting them back together on the collector.

Brokers cap the packet size (EMQX 1 MB, AWS IoT 128 KB, Mosquitto's ``max_packet_size``), so a record
longer than the payload budget travels as chunks. A message's first four bytes say which it is: a record
starts with ``b"CCTV"``, a chunk with ``b"CCCH"``. Chunk header (``docs/topics.md``), little-endian::

    magic "CCCH" | version u8 | record seq u64 | index u16 | count u16 | record length u32 | record CRC32 u32

followed by the slice ``record[offset : offset + len]``; slices are contiguous and in index order. The
CRC32 (zlib) covers the whole record so that the reassembled bytes are verified end to end.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.errors import WireFormatError

log = logging.getLogger(__name__)

RECORD_MAGIC = b"CCTV"
CHUNK_MAGIC = b"CCCH"
CHUNK_VERSION = 1
_HEADER = struct.Struct("<4sBQHHII")
CHUNK_HEADER_SIZE = _HEADER.size  # 25
MAX_CHUNKS = 0xFFFF
MAX_RECORD_BYTES = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    seq: int
    index: int
    count: int
    total_length: int
    crc32: int


def is_chunk(payload: bytes) -> bool:
    return payload[:4] == CHUNK_MAGIC


def split_record(seq: int, record: bytes, max_payload_bytes: int) -> list[bytes]:
    """The messages that carry ``record``: itself when it fits in ``max_payload_bytes``, else chunks.

    Raise ``ValueError`` when the record does not start with ``b"CCTV"``, when the budget is too small to
    hold a header and a byte, or when the record would need more than 65 535 chunks or exceeds 4 GiB.
    """
    if record[:4] != RECORD_MAGIC:
        raise ValueError(
            f"record does not start with {RECORD_MAGIC!r}: the collector could not tell it apart"
        )
    if len(record) <= max_payload_bytes:
        return [record]
    return list(iter_chunks(seq, record, max_payload_bytes))


def iter_chunks(seq: int, record: bytes, max_payload_bytes: int) -> Iterator[bytes]:
    """Chunk ``record`` unconditionally (each chunk at most ``max_payload_bytes`` long)."""
    slice_len = max_payload_bytes - CHUNK_HEADER_SIZE
    if slice_len < 1:
        raise ValueError(
            f"max_payload_bytes={max_payload_bytes} cannot hold a {CHUNK_HEADER_SIZE}-byte header"
        )
    if not record:
        raise ValueError("cannot chunk an empty record")
    if len(record) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(record)} bytes is too long to chunk (limit {MAX_RECORD_BYTES})")
    if not 0 <= seq < 2**64:
        raise ValueError(f"seq {seq} does not fit in u64")
    count = -(-len(record) // slice_len)
    if count > MAX_CHUNKS:
        raise ValueError(
            f"record of {len(record)} bytes needs {count} chunks of {slice_len} bytes; at most {MAX_CHUNKS}"
        )
    crc = zlib.crc32(record)
    view = memoryview(record)
    for index in range(count):
        part = view[index * slice_len : (index + 1) * slice_len]
        yield _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, seq, index, count, len(record), crc) + part


def parse_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Header and slice of one chunk message; ``WireFormatError`` when it cannot be a valid chunk."""
    if len(payload) < CHUNK_HEADER_SIZE + 1:
        raise WireFormatError(f"chunk of {len(payload)} bytes is shorter than its header plus one byte")
    magic, version, seq, index, count, total, crc = _HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise WireFormatError(f"chunk magic is {magic!r}, expected {CHUNK_MAGIC!r}")
    if version != CHUNK_VERSION:
        raise WireFormatError(f"chunk version {version} is not supported (expected {CHUNK_VERSION})")
    if count < 1 or index >= count:
        raise WireFormatError(f"chunk seq={seq}: index {index} is not below count {count}")
    data = payload[CHUNK_HEADER_SIZE:]
    if len(data) > total or count > total:
        raise WireFormatError(
            f"chunk seq={seq}: {count} chunks or {len(data)} bytes exceed record length {total}"
        )
    return ChunkHeader(seq, index, count, total, crc), data


@dataclass
class _Pending:
    header: ChunkHeader
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects chunks per camera and returns each record once all of its chunks have arrived.

    Tolerates duplicates and any arrival order. Memory is bounded: at most ``max_pending`` incomplete
    records and ``max_pending_bytes`` of held slices; beyond that the incomplete record fed least recently
    is dropped (counted in ``dropped``). Not thread-safe: one collector thread feeds it.
    """

    def __init__(
        self,
        *,
        max_pending: int = 64,
        max_pending_bytes: int = 256 * 1024 * 1024,
        max_record_bytes: int = 256 * 1024 * 1024,
        remember_completed: int = 1024,
    ) -> None:
        if min(max_pending, max_pending_bytes, max_record_bytes) < 1 or remember_completed < 0:
            raise ValueError("Reassembler limits must be positive")
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_record_bytes = min(max_record_bytes, max_pending_bytes)
        self.remember_completed = remember_completed
        self.dropped = 0
        """Incomplete records given up to stay within the limits, or replaced by a re-chunked send."""
        self.duplicates = 0
        self._pending: OrderedDict[tuple[str, int], _Pending] = OrderedDict()
        self._pending_bytes = 0
        # (camera, seq, crc) of recently completed records: late duplicate chunks are ignored, not held
        self._completed: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    @property
    def pending_records(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def feed(self, camera_key: str, payload: bytes) -> bytes | None:
        """The complete record carried by ``payload`` (a whole record, or the last missing chunk) or None.

        Raise ``WireFormatError`` for a message that is neither a record nor a valid chunk, for a chunk that
        contradicts an earlier copy of itself, and for a reassembled record whose length or CRC is wrong.
        Whole records are returned as they are, every time: verifying them is the wire format's job and
        dropping duplicates (QoS 1 is at least once) is the archive's, by seq.
        """
        payload = bytes(payload)
        magic = payload[:4]
        if magic == RECORD_MAGIC:
            return payload
        if magic != CHUNK_MAGIC:
            raise WireFormatError(
                f"camera {camera_key!r}: message starts with {magic!r}, neither record nor chunk"
            )
        header, data = parse_chunk(payload)
        if header.total_length > self.max_record_bytes:
            raise WireFormatError(
                f"camera {camera_key!r}: chunked record seq={header.seq} claims {header.total_length} bytes, "
                f"more than the {self.max_record_bytes} allowed"
            )
        if (camera_key, header.seq, header.crc32) in self._completed:
            self.duplicates += 1
            return None
        key = (camera_key, header.seq)
        pending = self._pending.get(key)
        if pending is not None and _chunking(pending.header) != _chunking(header):
            # the same seq chunked differently: a restarted agent re-sending with another budget
            log.info(
                "camera %r: record seq=%d re-sent with other chunking; restarting it", camera_key, header.seq
            )
            self._discard(key)
            self.dropped += 1
            pending = None
        if pending is None:
            pending = _Pending(header)
            self._pending[key] = pending
        return self._add(camera_key, key, pending, header, data)

    def _add(
        self, camera_key: str, key: tuple[str, int], pending: _Pending, header: ChunkHeader, data: bytes
    ) -> bytes | None:
        held = pending.parts.get(header.index)
        if held is not None:
            if held != data:
                raise WireFormatError(
                    f"camera {camera_key!r}: chunk {header.index} of record seq={header.seq} arrived twice "
                    "with different bytes"
                )
            self.duplicates += 1
            return None
        if pending.size + len(data) > header.total_length:
            self._discard(key)
            raise WireFormatError(
                f"camera {camera_key!r}: chunks of record seq={header.seq} hold more than its "
                f"{header.total_length} bytes"
            )
        pending.parts[header.index] = data
        pending.size += len(data)
        self._pending_bytes += len(data)
        if len(pending.parts) == header.count:
            return self._complete(camera_key, key, pending)
        self._pending.move_to_end(key)  # least recently fed first: that is what gets dropped
        self._enforce_limits()
        return None

    def _complete(self, camera_key: str, key: tuple[str, int], pending: _Pending) -> bytes:
        self._discard(key)
        header = pending.header
        record = b"".join(pending.parts[i] for i in range(header.count))
        if len(record) != header.total_length:
            raise WireFormatError(
                f"camera {camera_key!r}: record seq={header.seq} reassembled to {len(record)} bytes, "
                f"header says {header.total_length}"
            )
        if zlib.crc32(record) != header.crc32:
            raise WireFormatError(
                f"camera {camera_key!r}: record seq={header.seq} fails its CRC32 after reassembly"
            )
        if self.remember_completed:
            self._completed[(camera_key, header.seq, header.crc32)] = None
            while len(self._completed) > self.remember_completed:
                self._completed.popitem(last=False)
        return record

    def _discard(self, key: tuple[str, int]) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._pending_bytes -= pending.size

    def _enforce_limits(self) -> None:
        # the record just fed is last and, being within max_record_bytes, fits on its own
        while len(self._pending) > 1 and (
            len(self._pending) > self.max_pending or self._pending_bytes > self.max_pending_bytes
        ):
            oldest = next(iter(self._pending))
            log.warning("dropping incomplete record %r/seq=%d to bound memory", oldest[0], oldest[1])
            self._discard(oldest)
            self.dropped += 1


def _chunking(header: ChunkHeader) -> tuple[int, int, int]:
    """What every chunk of one send of one record agrees on."""
    return header.count, header.total_length, header.crc32
