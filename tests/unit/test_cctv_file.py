"""A .cctv file: records back to back, read whole (``iter_records``) or stepping over damage (``scan_records``)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from agent.codec.cctv_file import Damage, iter_records, scan_records
from agent.codec.wire import Record, pack_record
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
