"""Chunking: golden header bytes, round trips in any order, bounded memory and hostile input."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import WireFormatError
from agent.transport.chunks import (
    CHUNK_HEADER_SIZE,
    CHUNK_VERSION,
    ChunkHeader,
    Reassembler,
    iter_chunks,
    parse_chunk,
    split_record,
)


def record_of(size: int, seed: int = 0) -> bytes:
    body = random.Random(seed).randbytes(max(0, size - 4))
    return (b"CCTV" + body)[:size]


def test_golden_chunk_header() -> None:
    record = b"CCTV" + bytes(range(6))  # 10 bytes
    chunks = list(iter_chunks(0x0102030405060708, record, CHUNK_HEADER_SIZE + 4))
    crc = zlib.crc32(record).to_bytes(4, "little")
    assert chunks == [
        b"CCCH\x01" + bytes.fromhex("0807060504030201") + b"\x00\x00\x03\x00\x0a\x00\x00\x00" + crc + b"CCTV",
        b"CCCH\x01"
        + bytes.fromhex("0807060504030201")
        + b"\x01\x00\x03\x00\x0a\x00\x00\x00"
        + crc
        + bytes(range(4)),
        b"CCCH\x01"
        + bytes.fromhex("0807060504030201")
        + b"\x02\x00\x03\x00\x0a\x00\x00\x00"
        + crc
        + b"\x04\x05",
    ]
    assert CHUNK_HEADER_SIZE == 25
    header, data = parse_chunk(chunks[2])
    assert header == ChunkHeader(0x0102030405060708, 2, 3, 10, zlib.crc32(record))
    assert data == b"\x04\x05"


def test_records_that_fit_travel_whole() -> None:
    record = record_of(1000)
    assert split_record(5, record, 1000) == [record]
    assert Reassembler().feed("cam", record) == record


def test_chunks_respect_the_budget() -> None:
    record = record_of(300_000)
    chunks = split_record(1, record, 64 * 1024)
    assert len(chunks) == 5
    assert all(len(c) <= 64 * 1024 for c in chunks)


def test_impossible_budgets_and_non_records_are_refused() -> None:
    with pytest.raises(ValueError, match="does not start with"):
        split_record(1, b"JUNK" * 100, 100)
    with pytest.raises(ValueError, match="header"):
        split_record(1, record_of(100), CHUNK_HEADER_SIZE)
    with pytest.raises(ValueError, match="65535"):
        split_record(1, record_of(70_000), CHUNK_HEADER_SIZE + 1)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(4, 5000),
    budget=st.integers(CHUNK_HEADER_SIZE + 1, 2000),
    seq=st.integers(0, 2**64 - 1),
    order_seed=st.integers(0, 2**32),
    duplicates=st.integers(0, 5),
)
def test_round_trip_in_any_order_with_duplicates(
    size: int, budget: int, seq: int, order_seed: int, duplicates: int
) -> None:
    record = record_of(size, order_seed)
    messages = split_record(seq, record, budget)
    whole = len(messages) == 1
    rng = random.Random(order_seed)
    messages = messages + [rng.choice(messages) for _ in range(duplicates)]
    rng.shuffle(messages)
    reassembler = Reassembler()
    results = [r for m in messages if (r := reassembler.feed("cam", m)) is not None]
    # a whole record carries no seq the reassembler could read: its duplicates pass through
    assert results == [record] * (1 + duplicates if whole else 1)
    assert reassembler.pending_records == 0
    assert reassembler.pending_bytes == 0


def test_interleaved_records_and_cameras() -> None:
    reassembler = Reassembler()
    a, b = record_of(5000, 1), record_of(7000, 2)
    ca, cb = split_record(7, a, 1000), split_record(7, b, 1000)
    out = []
    for x, y in zip(ca, cb, strict=False):
        out += [reassembler.feed("cam-a", x), reassembler.feed("cam-b", y)]
    out += [reassembler.feed("cam-b", y) for y in cb[len(ca) :]]
    assert [r for r in out if r is not None] == [a, b]


def test_late_duplicate_after_completion_is_ignored() -> None:
    reassembler = Reassembler()
    chunks = split_record(3, record_of(3000), 1000)
    for c in chunks:
        reassembler.feed("cam", c)
    assert reassembler.feed("cam", chunks[0]) is None
    assert reassembler.pending_records == 0
    assert reassembler.duplicates == 1


def test_re_chunked_send_restarts_the_record() -> None:
    record = record_of(3000)
    reassembler = Reassembler()
    assert reassembler.feed("cam", split_record(9, record, 1000)[0]) is None
    results = [reassembler.feed("cam", c) for c in split_record(9, record, 700)]
    assert results[-1] == record
    assert reassembler.dropped == 1


def test_memory_is_bounded_by_count() -> None:
    reassembler = Reassembler(max_pending=3)
    firsts = [split_record(seq, record_of(3000, seq), 1000)[0] for seq in range(10)]
    for chunk in firsts:
        assert reassembler.feed("cam", chunk) is None
    assert reassembler.pending_records == 3
    assert reassembler.dropped == 7


def test_memory_is_bounded_by_bytes() -> None:
    reassembler = Reassembler(max_pending_bytes=10_000, max_record_bytes=10_000)
    for seq in range(10):
        reassembler.feed("cam", split_record(seq, record_of(9000, seq), 4000)[0])
        assert reassembler.pending_bytes <= 10_000
    assert reassembler.dropped >= 7
    # the newest record can still complete
    chunks = split_record(9, record_of(9000, 9), 4000)
    assert [reassembler.feed("cam", c) for c in chunks[1:]][-1] == record_of(9000, 9)


def test_record_longer_than_allowed_is_refused() -> None:
    reassembler = Reassembler(max_record_bytes=5000)
    with pytest.raises(WireFormatError, match="claims 6000 bytes"):
        reassembler.feed("cam", split_record(1, record_of(6000), 1000)[0])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "neither record nor chunk"),
        (b"JUNKJUNKJUNK", "neither record nor chunk"),
        (b"CCCH" + bytes(10), "shorter than its header"),
        (struct.pack("<4sBQHHII", b"CCCH", 2, 1, 0, 1, 1, 0) + b"x", "version 2"),
        (struct.pack("<4sBQHHII", b"CCCH", 1, 1, 3, 3, 9, 0) + b"x", "index 3 is not below count 3"),
        (struct.pack("<4sBQHHII", b"CCCH", 1, 1, 0, 0, 9, 0) + b"x", "count 0"),
        (struct.pack("<4sBQHHII", b"CCCH", 1, 1, 0, 2, 1, 0) + b"x", "exceed record length"),
        (struct.pack("<4sBQHHII", b"CCCH", 1, 1, 0, 1, 2, 0) + b"xyz", "exceed record length"),
    ],
)
def test_garbage_raises_wire_format_error(payload: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        Reassembler().feed("cam", payload)


def test_corrupted_slice_fails_the_crc() -> None:
    chunks = split_record(1, record_of(3000), 1000)
    chunks[1] = chunks[1][:-1] + bytes([chunks[1][-1] ^ 1])
    reassembler = Reassembler()
    for chunk in chunks[:-1]:
        assert reassembler.feed("cam", chunk) is None
    with pytest.raises(WireFormatError, match="CRC32"):
        reassembler.feed("cam", chunks[-1])
    assert reassembler.pending_records == 0


def test_conflicting_copies_of_a_chunk_are_refused() -> None:
    chunks = split_record(1, record_of(3000), 1000)
    reassembler = Reassembler()
    reassembler.feed("cam", chunks[0])
    with pytest.raises(WireFormatError, match="different bytes"):
        reassembler.feed("cam", chunks[0][:-1] + b"\x00")


def test_short_sum_of_slices_is_refused() -> None:
    chunks = split_record(1, record_of(3000), 1000)
    reassembler = Reassembler()
    for chunk in chunks[:-1]:
        assert reassembler.feed("cam", chunk) is None
    with pytest.raises(WireFormatError, match="reassembled to"):
        reassembler.feed("cam", chunks[-1][:-10])


def _mutate(rng: random.Random, message: bytes) -> bytes:
    data = bytearray(message)
    kind = rng.randrange(5)
    if kind == 0 and data:  # flip bits, header included
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), CHUNK_HEADER_SIZE + 8))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif kind == 2:  # overwrite a header field with random bytes
        start = rng.randrange(CHUNK_HEADER_SIZE)
        data[start : start + 4] = rng.randbytes(4)
    elif kind == 3:  # append junk
        data += rng.randbytes(rng.randint(1, 50))
    else:  # random bytes behind a valid magic
        data = bytearray(b"CCCH" + rng.randbytes(rng.randint(0, 60)))
    return bytes(data)


def test_hostile_mutations_only_raise_wire_format_error() -> None:
    rng = random.Random(20240611)
    records = {seq: record_of(rng.randint(100, 4000), seq) for seq in range(20)}
    messages = [m for seq, rec in records.items() for m in split_record(seq, rec, 500)]
    reassembler = Reassembler(max_pending=16, max_pending_bytes=64 * 1024, max_record_bytes=64 * 1024)
    outcomes = {"none": 0, "error": 0, "record": 0}
    for _ in range(10_000):
        message = rng.choice(messages)
        if rng.random() < 0.7:
            message = _mutate(rng, message)
        try:
            result = reassembler.feed(f"cam{rng.randrange(2)}", message)
        except WireFormatError:
            outcomes["error"] += 1
            continue
        if result is None:
            outcomes["none"] += 1
        else:
            outcomes["record"] += 1
            assert result.startswith(b"CCTV")
            assert result in records.values() or result == message  # verified or passed through whole
        assert reassembler.pending_records <= 16
        assert reassembler.pending_bytes <= 64 * 1024
    assert outcomes["error"] > 1000
    assert outcomes["none"] > 1000


def test_docs_describe_this_chunk_version() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "topics.md").read_text()
    assert f"Chunk format version: {CHUNK_VERSION}\n" in docs
    assert f"{CHUNK_HEADER_SIZE}-byte header" in docs
