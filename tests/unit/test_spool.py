"""The spool on a real directory: order, acknowledgement, restart, repair, the byte cap and eviction."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SpoolError
from agent.spool import Spool, SpoolEntry
from agent.spool.files import HEADER_SIZE, record_name


def payload(seq: int, size: int = 1000) -> bytes:
    """Self-checking bytes: a digest of the body, then a body that differs for every seq."""
    body = hashlib.shake_256(seq.to_bytes(8, "little")).digest(size)
    return hashlib.sha256(body).digest() + body


def intact(data: bytes) -> bool:
    return hashlib.sha256(data[32:]).digest() == data[:32]


def key(seq: int, size: int = 1000) -> SpoolEntry:
    return SpoolEntry(seq, seq, True, payload(seq, size))


def member(seq: int, key_seq: int, size: int = 1000) -> SpoolEntry:
    return SpoolEntry(seq, key_seq, False, payload(seq, size))


def seqs(spool: Spool) -> list[int]:
    return [e.seq for e in spool.peek(limit=10_000)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool", max_bytes=1 << 30) as s:
        yield s


def test_round_trip_in_seq_order(spool: Spool) -> None:
    entries = [key(1), member(2, 1), member(3, 1), key(4, 5000), member(5, 4, 0)]
    for e in entries:
        spool.put(e)
    assert spool.peek() == entries
    assert spool.peek(limit=2) == entries[:2]
    assert spool.peek(limit=2, after=2) == entries[2:4]
    assert spool.peek(after=5) == []
    assert len(spool) == 5
    assert spool.bytes_used == sum(e.size for e in entries)
    assert spool.peek() == entries, "peek must not remove"


def test_ack_removes_and_unknown_ack_is_a_no_op(spool: Spool) -> None:
    for e in (key(1), member(2, 1), member(3, 1)):
        spool.put(e)
    spool.ack(2)
    spool.ack(2)
    spool.ack(99)
    assert seqs(spool) == [1, 3]
    assert spool.bytes_used == 2 * key(1).size
    assert not (spool._dir / record_name(2)).exists()


def test_restart_replays_in_order_with_the_same_bytes(tmp_path: Path) -> None:
    entries = [key(1), member(2, 1), key(3, 20_000), member(4, 3), member(5, 3)]
    with Spool(tmp_path, 1 << 20) as first:
        for e in entries:
            first.put(e)
        first.ack(1)
    with Spool(tmp_path, 1 << 20) as again:
        assert again.peek() == entries[1:]
        assert again.last_seq == 5
        assert again.bytes_used == sum(e.size for e in entries[1:])
        assert not again.needs_key()
        again.put(member(6, 3))  # the group on disk stays open for members
        assert seqs(again) == [2, 3, 4, 5, 6]


def test_a_second_opener_is_refused(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="already open"):
        Spool(spool._dir, 1 << 20)


def test_closed_spool_refuses_calls(spool: Spool) -> None:
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.put(key(1))


def test_seq_must_increase(spool: Spool) -> None:
    spool.put(key(5))
    with pytest.raises(SpoolError, match="not after"):
        spool.put(key(5))
    with pytest.raises(SpoolError, match="not after"):
        spool.put(key(3))


@pytest.mark.parametrize(
    ("seq", "key_seq", "is_key"),
    [(5, 4, True), (5, 5, False), (5, 6, False), (-1, -1, True), (2**64, 2**64, True)],
)
def test_entry_rejects_inconsistent_fields(seq: int, key_seq: int, is_key: bool) -> None:
    with pytest.raises(SpoolError, match=f"seq={seq}"):
        SpoolEntry(seq, key_seq, is_key, b"")


def test_reopen_drops_half_written_temp_and_torn_tail_only(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as s:
        for e in (key(1), member(2, 1), key(3), member(4, 3), member(5, 3)):
            s.put(e)
    (tmp_path / (record_name(6) + ".tmp")).write_bytes(payload(6)[:500])  # crashed before os.replace
    torn = tmp_path / record_name(5)
    torn.write_bytes(torn.read_bytes()[:-100])  # a tail cut short
    with Spool(tmp_path, 1 << 20) as s:
        assert seqs(s) == [1, 2, 3, 4]
        assert all(intact(e.data) for e in s.peek())
        assert s.counters()["dropped_records"] == 1
        assert s.needs_key()
        assert s.last_seq == 5, "a dropped seq must not be handed out again"
        with pytest.raises(SpoolError, match="refused"):
            s.put(member(6, 3))  # its chain is broken: seq 5 is gone
        s.put(key(7))
        assert not s.needs_key()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_reopen_drops_the_members_that_depend_on_a_torn_record(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as s:
        for e in (key(1), member(2, 1), member(3, 1), member(4, 1), key(5), member(6, 5)):
            s.put(e)
    (tmp_path / record_name(3)).write_bytes(b"CSPL")  # header cut short
    with Spool(tmp_path, 1 << 20) as s:
        assert seqs(s) == [1, 2, 5, 6]
        assert s.counters()["dropped_records"] == 2


def test_corrupt_payload_is_dropped_when_read(spool: Spool) -> None:
    for e in (key(1), member(2, 1), member(3, 1)):
        spool.put(e)
    path = spool._dir / record_name(2)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert seqs(spool) == [1]  # stops before the bad record, which went with the member after it
    assert spool.counters()["dropped_records"] == 2
    assert spool.needs_key()
    with pytest.raises(SpoolError, match="lost a record"):
        spool.put(member(4, 1))
    spool.put(key(5))
    assert seqs(spool) == [1, 5]


def test_cap_evicts_whole_groups_oldest_first(tmp_path: Path) -> None:
    size = 1000 + 32 + HEADER_SIZE
    with Spool(tmp_path, max_bytes=7 * size) as s:
        for g in (1, 4):
            s.put(key(g))
            s.put(member(g + 1, g))
            s.put(member(g + 2, g))
        assert not s.needs_key()
        s.put(key(7))  # fits: 7 records
        s.put(member(8, 7))  # needs room: group 1 goes whole
        assert seqs(s) == [4, 5, 6, 7, 8]
        assert (s.evicted_groups, s.evicted_records) == (1, 3)
        assert s.needs_key()
        s.put(member(9, 7))
        s.put(member(10, 7))
        s.put(member(11, 7))  # group 4 goes; the open group 7 is spared
        assert seqs(s) == [7, 8, 9, 10, 11]
        assert (s.evicted_groups, s.evicted_records) == (2, 6)
        assert s.bytes_used <= s.max_bytes
        s.put(key(12))
        assert not s.needs_key()
        assert s.totals()["evicted_groups"] == 2
    with Spool(tmp_path, max_bytes=7 * size) as s:
        assert s.totals()["evicted_records"] == 6, "lifetime counters persist"
        assert s.evicted_records == 0


def test_member_of_an_evicted_group_is_refused(tmp_path: Path) -> None:
    size = 1000 + 32 + HEADER_SIZE
    with Spool(tmp_path, max_bytes=3 * size) as s:
        s.put(key(1))
        s.put(member(2, 1))
        s.put(key(3, 2 * 1000 + HEADER_SIZE + 32))  # evicts group 1
        with pytest.raises(SpoolError, match="refused"):
            s.put(member(4, 1))
        assert s.counters()["refused_records"] == 1
        assert seqs(s) == [3]


def test_entry_bigger_than_the_cap_is_refused_without_evicting(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=10_000) as s:
        s.put(key(1))
        with pytest.raises(SpoolError, match="does not fit"):
            s.put(key(2, 20_000))
        assert seqs(s) == [1]
        assert s.evicted_groups == 0
        assert s.needs_key()
        assert not (tmp_path / record_name(2)).exists()


def test_open_group_that_fills_the_cap_keeps_its_records_until_the_next_key(tmp_path: Path) -> None:
    size = 1000 + 32 + HEADER_SIZE
    with Spool(tmp_path, max_bytes=3 * size) as s:
        for e in (key(1), member(2, 1), member(3, 1)):
            s.put(e)
        with pytest.raises(SpoolError, match="beside the"):
            s.put(member(4, 1))
        assert seqs(s) == [1, 2, 3], "still deliverable: nothing is evicted in vain"
        assert s.needs_key()
        with pytest.raises(SpoolError, match="lost a record"):
            s.put(member(5, 1))
        s.put(key(6))
        assert seqs(s) == [6]
        assert s.evicted_groups == 1


def test_state_round_trip_is_atomic_and_survives_restart(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as s:
        assert s.load_state() == {}
        s.save_state({"next_seq": 41})
        s.save_state({"next_seq": 42, "camera": "gate"})
    assert not list(tmp_path.glob("*.tmp"))
    with Spool(tmp_path, 1 << 20) as s:
        assert s.load_state() == {"next_seq": 42, "camera": "gate"}
        with pytest.raises(SpoolError, match="not JSON"):
            s.save_state({"x": object()})
    (tmp_path / "state.json").write_text("{tor")
    with Spool(tmp_path, 1 << 20) as s:
        assert s.load_state() == {}
    (tmp_path / "state.json").write_text(json.dumps([1, 2]))
    with Spool(tmp_path, 1 << 20) as s:
        assert s.load_state() == {}


def test_records_are_private_to_the_agent_user(spool: Spool) -> None:
    spool.put(key(1))
    assert (spool._dir / record_name(1)).stat().st_mode & 0o077 == 0


def test_publisher_thread_sees_every_record_once_in_order(spool: Spool) -> None:
    count = 300
    received: list[int] = []
    done = threading.Event()

    def publish() -> None:
        last: int | None = None
        while len(received) < count and not done.is_set():
            for e in spool.peek(limit=7, after=last):
                assert intact(e.data)
                received.append(e.seq)
                last = e.seq
                spool.ack(e.seq)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        for seq in range(1, count + 1):
            spool.put(key(seq, 200) if seq % 10 == 1 else member(seq, seq - (seq - 1) % 10, 200))
    finally:
        publisher.join(timeout=10)
        done.set()
    assert received == list(range(1, count + 1))
    assert len(spool) == 0
    assert spool.bytes_used == 0


ops = st.lists(
    st.one_of(
        st.tuples(st.just("key"), st.integers(0, 4000)),
        st.tuples(st.just("member"), st.integers(0, 4000)),
        st.tuples(st.just("ack"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_no_member_outlives_its_group_and_the_cap_holds(operations: list[tuple[str, int]]) -> None:
    cap = 10_000
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        s = Spool(directory, cap)
        stored: dict[int, list[int]] = {}  # key_seq -> seqs whose put returned
        acked: set[int] = set()
        seq, group = 0, 0
        try:
            for op, size in operations:
                if op == "reopen":
                    s.close()
                    s = Spool(directory, cap)
                elif op == "ack":
                    if held := s.peek(limit=1):
                        s.ack(held[0].seq)
                        acked.add(held[0].seq)
                else:
                    seq += 1
                    if op == "key" or group == 0:
                        group = seq
                    entry = SpoolEntry(seq, group, group == seq, payload(seq, size))
                    try:
                        s.put(entry)
                    except SpoolError:
                        assert s.needs_key()
                    else:
                        stored.setdefault(group, []).append(seq)
                held = s.peek(limit=1000)
                assert [e.seq for e in held] == sorted(e.seq for e in held)
                assert all(intact(e.data) for e in held)
                assert s.bytes_used == sum(e.size for e in held) <= cap
                for key_seq, members in stored.items():
                    present = [e.seq for e in held if e.key_seq == key_seq]
                    assert present in ([], [m for m in members if m not in acked]), f"group {key_seq}"
        finally:
            s.close()
        assert not list(directory.glob("*.tmp"))
