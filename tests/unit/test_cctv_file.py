"""A .cctv file: records back to back, read whole (``iter_records``) or stepping over damage (``scan_records``)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import pytest

from agent.codec.cctv_file import Damage, iter_records, scan_records
from agent.codec.crc import STEP
from agent.codec.wire import CRC_SIZE, FIXED_SIZE, MAGIC, Record, pack_record, unpack_header, unpack_record
from agent.errors import WireFormatError
from tests.unit.test_wire import _header


def test_cctv_file_is_records_back_to_back() -> None:
    records = [Record(_header(seq=s, ref_seq=s - 1), bytes([s]) * s) for s in range(5, 9)]
    stream = io.BytesIO(b"".join(pack_record(r) for r in records))
    assert list(iter_records(stream)) == records
    truncated = io.BytesIO(stream.getvalue()[:-3])
    with pytest.raises(WireFormatError, match="truncated"):
        list(iter_records(truncated))


def _four_records() -> tuple[list[Record], list[bytes]]:
    records = [Record(_header(seq=s, ref_seq=s - 1), bytes([s]) * (40 + s)) for s in range(5, 9)]
    return records, [pack_record(r) for r in records]


def test_scan_reads_a_clean_file_as_iter_records_does() -> None:
    records, packed = _four_records()
    data = b"".join(packed)
    offsets = [sum(len(b) for b in packed[:i]) for i in range(4)]
    assert list(scan_records(data)) == list(zip(offsets, records, strict=True))
    assert list(scan_records(b"")) == []


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda b: b[:30] + bytes([b[30] ^ 0x01]) + b[31:], "a flipped payload bit: CRC"),
        (lambda b: b[:16] + b"\xff\xff\xff\x7f" + b[20:], "the length field: the record's end unknowable"),
        (lambda b: b[:50], "a record cut short"),
        (lambda b: b"CCTV" + b"\x00" * 200, "garbage that starts like a record"),
    ],
)
def test_scan_steps_over_a_damaged_record_to_the_next_one(
    damage: Callable[[bytes], bytes], what: str
) -> None:
    records, packed = _four_records()
    bad = damage(packed[1])
    data = packed[0] + bad + packed[2] + packed[3]
    items = list(scan_records(data))
    start = len(packed[0])
    assert items[0] == (0, records[0])
    assert isinstance(items[1], Damage), what
    assert (items[1].offset, items[1].length) == (start, len(bad)), what
    assert items[2:] == [(start + len(bad), records[2]), (start + len(bad) + len(packed[2]), records[3])], (
        what
    )


def test_scan_reports_garbage_first_and_a_torn_tail_last() -> None:
    records, packed = _four_records()
    data = b"junk" * 10 + packed[0] + packed[1][:-1]
    head, first, tail = scan_records(data)
    assert isinstance(head, Damage)
    assert (head.offset, head.length) == (0, 40)
    assert "magic" in head.reason
    assert first == (40, records[0])
    assert isinstance(tail, Damage)
    assert (tail.offset, tail.length) == (40 + len(packed[0]), len(packed[1]) - 1)
    assert "truncated" in tail.reason
    (only,) = scan_records(b"CCTV" * 1000)
    assert isinstance(only, Damage)
    assert (only.offset, only.length) == (0, 4000)


class _CountingData:
    """bytes that count what is read from them: how much of the file a scan touches."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: slice, /) -> bytes:
        out = self.data[index]
        self.read += len(out)
        return out

    def find(self, sub: bytes, start: int = 0, /) -> int:
        return self.data.find(sub, start)


def _headers_claiming_the_rest(size: int, step: int) -> bytes:
    """Garbage a hostile file could hold: a record header every ``step`` bytes, each declaring a payload that
    runs to the end of the file (every one fails its CRC only once all of it is read)."""
    records, _ = _four_records()
    one = bytearray(pack_record(records[0]))
    header_length = struct.unpack_from("<H", one, 8)[0]
    buf = bytearray(size)
    for pos in range(0, size - len(one), step):
        buf[pos : pos + header_length] = one[:header_length]
        struct.pack_into("<I", buf, pos + 16, size - pos - header_length - 4)
    return bytes(buf)


def test_scan_reads_each_hostile_header_in_bounded_bytes_whatever_length_it_claims() -> None:
    """Each candidate used to be read whole to check its CRC: for this file, about 3,000 candidates of 100 kB
    on average, 1,500 times the file. Now the prefix CRCs read the file once, each candidate at most two steps
    of it and its header, and the records after the garbage are found."""
    records, packed = _four_records()
    size, step = 200_000, 64
    garbage = _headers_claiming_the_rest(size, step)
    data = _CountingData(garbage + packed[2] + packed[3])
    items = list(scan_records(data))
    assert isinstance(items[0], Damage)
    assert (items[0].offset, items[0].length) == (0, len(garbage))
    assert "checksum" in items[0].reason
    assert items[1:] == [(len(garbage), records[2]), (len(garbage) + len(packed[2]), records[3])]
    candidates = len(range(0, size - len(packed[0]), step))
    assert data.read <= 2 * len(data) + candidates * (2 * STEP + 512)


def test_a_header_shorter_than_the_fixed_one_is_a_wire_format_error() -> None:
    """With a valid CRC it used to reach the camera id's length byte past the record's end (IndexError)."""
    body = bytearray(FIXED_SIZE - CRC_SIZE)
    body[0:5] = MAGIC + b"\x01"
    body[7] = 1  # GRAY8
    struct.pack_into("<I", body, 16, FIXED_SIZE - CRC_SIZE)  # header length 0: the payload is the rest
    record = bytes(body) + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(WireFormatError, match="no room for a camera id"):
        unpack_record(record)
    (only,) = scan_records(record)
    assert isinstance(only, Damage)
    assert "no room for a camera id" in only.reason


def test_unpack_header_reads_what_unpack_record_reads_from_the_header_alone() -> None:
    records, packed = _four_records()
    header_length = struct.unpack_from("<H", packed[1], 8)[0]
    assert unpack_header(packed[1][:header_length]) == records[1].header
    with pytest.raises(WireFormatError, match="truncated header"):
        unpack_header(packed[1][: header_length - 1])
    with pytest.raises(WireFormatError, match="unknown stage"):
        unpack_header(packed[1][: header_length - 1] + b"\xee")
