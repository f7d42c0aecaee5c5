"""The archive's writer on a real directory: layout, de-duplication, conflicts, rollover, out-of-order arrival."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.archive import FORMAT_VERSION, Archive, StoreOutcome, iter_frames
from agent.archive.maintenance import verify
from agent.archive.paths import utc_day
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import Kind, pack_record, unpack_record
from agent.errors import ArchiveError, WireFormatError

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
STEP = 40_000_000


def make_frames(n: int, seed: int = 0, shape: tuple[int, ...] = (24, 32, 3)) -> list[npt.NDArray[np.uint8]]:
    """Similar frames (a moving bright row on fixed noise): members stay members, each frame differs."""
    base = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    frames = []
    for i in range(n):
        img = base.copy()
        img[i % shape[0]] = (37 * i) % 256
        frames.append(img)
    return frames


def encode(
    frames: list[npt.NDArray[np.uint8]],
    camera: str = "cam1",
    key_every: int = 4,
    reference: str = "previous",
    times: list[int] | None = None,
) -> list[bytes]:
    settings = CodecSettings(max_key_interval_frames=key_every, max_key_interval_s=0.0, reference=reference)  # type: ignore[arg-type]
    encoder = FrameEncoder(camera, settings)
    times = times or [T0 + i * STEP for i in range(len(frames))]
    return [pack_record(encoder.encode(f, t)) for f, t in zip(frames, times, strict=True)]


def rows(root: Path, site: str = "site1", camera: str = "cam1") -> list[tuple[int, str, int, int, int, int]]:
    with closing(sqlite3.connect(root / site / camera / "index.sqlite")) as conn:
        return conn.execute(
            "SELECT seq, day, segment, offset, size, decodable FROM records ORDER BY seq"
        ).fetchall()


def test_doc_version_matches_code(tmp_path: Path) -> None:
    text = (REPO / "docs" / "archive-format.md").read_text(encoding="utf-8")
    match = re.search(r"^Version: (\d+)$", text, re.MULTILINE)
    assert match is not None, "docs/archive-format.md must state 'Version: N'"
    assert int(match.group(1)) == FORMAT_VERSION
    Archive(tmp_path / "a").close()
    assert (tmp_path / "a" / "VERSION").read_text() == f"{FORMAT_VERSION}\n"


def test_other_layout_version_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("VERSION").write_text("2\n")
    with pytest.raises(ArchiveError, match="layout version '2'"):
        Archive(tmp_path)


def test_records_stored_verbatim_back_to_back_and_indexed(tmp_path: Path) -> None:
    records = encode(make_frames(6))
    with Archive(tmp_path) as archive:
        assert [archive.store(r, "site1") for r in records] == [StoreOutcome.STORED] * 6
    day = utc_day(T0)
    segment = tmp_path / "site1" / "cam1" / day / "segment-000001.cctv"
    assert segment.read_bytes() == b"".join(records)
    offsets = np.cumsum([0] + [len(r) for r in records[:-1]]).tolist()
    assert rows(tmp_path) == [(i, day, 1, offsets[i], len(r), 1) for i, r in enumerate(records)]
    with closing(sqlite3.connect(tmp_path / "site1" / "cam1" / "index.sqlite")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_duplicate_is_recognised_and_not_written_twice(tmp_path: Path) -> None:
    records = encode(make_frames(3))
    with Archive(tmp_path) as archive:
        for r in records:
            archive.store(r, "site1")
        assert archive.store(records[1], "site1") is StoreOutcome.DUPLICATE
        assert archive.store(bytearray(records[2]), "site1") is StoreOutcome.DUPLICATE
    assert len(rows(tmp_path)) == 3
    assert sum(p.stat().st_size for p in tmp_path.glob("site1/cam1/*/*.cctv")) == sum(map(len, records))


def test_conflicting_copy_is_refused_and_the_first_kept(tmp_path: Path) -> None:
    frames = make_frames(3)
    first = encode(frames)
    other = encode(make_frames(3, seed=1))  # same seqs, other pixels
    with Archive(tmp_path) as archive:
        for r in first:
            archive.store(r, "site1")
        with pytest.raises(ArchiveError, match=r"seq=1 arrived again with different content"):
            archive.store(other[1], "site1")
        archive.store(first[2], "site1")  # the archive goes on working
    got = list(iter_frames(tmp_path, "cam1"))
    assert [h.seq for h, _ in got] == [0, 1, 2]
    assert all(np.array_equal(img, f) for (_, img), f in zip(got, frames, strict=True))


def test_invalid_bytes_raise_wire_format_error_and_write_nothing(tmp_path: Path) -> None:
    record = bytearray(encode(make_frames(1))[0])
    record[40] ^= 0xFF
    with Archive(tmp_path) as archive, pytest.raises(WireFormatError, match="checksum"):
        archive.store(bytes(record), "site1")
    assert list(tmp_path.iterdir()) == [tmp_path / "VERSION"]


def test_day_rollover_and_late_record_goes_to_its_own_day(tmp_path: Path) -> None:
    midnight = 1_700_006_400_000_000_000  # 2023-11-15T00:00:00Z
    times = [midnight - 2 * STEP, midnight - STEP, midnight, midnight + STEP]
    records = encode(make_frames(4), key_every=2, times=times)
    with Archive(tmp_path) as archive:
        for i in (0, 2, 3, 1):  # seq 1 (day one) arrives after day two began
            archive.store(records[i], "site1")
    assert [(seq, day, segment) for seq, day, segment, *_ in rows(tmp_path)] == [
        (0, "2023-11-14", 1),
        (1, "2023-11-14", 1),
        (2, "2023-11-15", 1),
        (3, "2023-11-15", 1),
    ]
    cam = tmp_path / "site1" / "cam1"
    assert (cam / "2023-11-14" / "segment-000001.cctv").read_bytes() == records[0] + records[1]
    assert (cam / "2023-11-15" / "segment-000001.cctv").read_bytes() == records[2] + records[3]
    assert verify(tmp_path).ok


def test_segments_roll_over_at_the_size_limit(tmp_path: Path) -> None:
    frames = make_frames(10)
    records = encode(frames)
    limit = 2 * max(map(len, records)) + 1
    with Archive(tmp_path, segment_max_bytes=limit) as archive:
        for r in records:
            archive.store(r, "site1")
    expected: list[list[int]] = [[]]  # the rule: a record starts a new segment if it would pass the limit
    for i, r in enumerate(records):
        if expected[-1] and sum(len(records[j]) for j in expected[-1]) + len(r) > limit:
            expected.append([])
        expected[-1].append(i)
    segments = sorted(tmp_path.glob("site1/cam1/*/segment-*.cctv"))
    assert len(segments) == len(expected) >= 3
    for path, members in zip(segments, expected, strict=True):
        assert path.read_bytes() == b"".join(records[j] for j in members)
        assert path.stat().st_size <= limit
    assert b"".join(p.read_bytes() for p in segments) == b"".join(records)
    got = list(iter_frames(tmp_path, "cam1"))
    assert all(np.array_equal(img, f) for (_, img), f in zip(got, frames, strict=True))
    assert len(got) == 10


def test_record_larger_than_the_limit_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    records = encode(make_frames(3))
    with Archive(tmp_path, segment_max_bytes=10) as archive:
        for r in records:
            archive.store(r, "site1")
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("site1/cam1/*/segment-*.cctv"))]
    assert sizes == [len(r) for r in records]


def test_member_before_its_reference_becomes_decodable_when_the_chain_completes(tmp_path: Path) -> None:
    frames = make_frames(4)
    records = encode(frames, key_every=10, reference="previous")
    kinds = [unpack_record(r).header for r in records]
    assert kinds[0].kind is Kind.KEY
    assert [h.ref_seq for h in kinds[1:]] == [0, 1, 2]
    decodable = lambda: [flag for *_, flag in rows(tmp_path)]  # noqa: E731
    with Archive(tmp_path) as archive:
        archive.store(records[3], "site1")
        archive.store(records[1], "site1")
        assert decodable() == [0, 0]
        report = verify(tmp_path)
        assert not report.ok
        assert any("seq=1" in p and "needs seq=0" in p for p in report.problems)
        assert any("seq=3" in p and "needs seq=2" in p for p in report.problems)
        assert list(iter_frames(tmp_path, "cam1")) == []
        archive.store(records[0], "site1")
        assert decodable() == [1, 1, 0]  # seq 3 still waits for seq 2
        archive.store(records[2], "site1")
        assert decodable() == [1, 1, 1, 1]
    got = list(iter_frames(tmp_path, "cam1"))
    assert [h.seq for h, _ in got] == [0, 1, 2, 3]
    assert all(np.array_equal(img, f) for (_, img), f in zip(got, frames, strict=True))
    assert verify(tmp_path).ok


def test_batched_flush_commits_only_on_flush(tmp_path: Path) -> None:
    records = encode(make_frames(5))
    with Archive(tmp_path, autoflush=False) as archive:
        archive.store(records[0], "site1")
        for r in records[1:]:
            archive.store(r, "site1")
        assert list(iter_frames(tmp_path, "cam1")) == []  # readers see committed rows only
        archive.flush()
        assert len(list(iter_frames(tmp_path, "cam1"))) == 5


def test_second_writer_of_a_camera_is_refused(tmp_path: Path) -> None:
    records = encode(make_frames(2))
    with Archive(tmp_path) as first, Archive(tmp_path) as second:
        first.store(records[0], "site1")
        with pytest.raises(ArchiveError, match="another process is writing it"):
            second.store(records[1], "site1")
        second.store(encode(make_frames(1), camera="cam2")[0], "site1")  # other cameras are free


def test_cameras_and_sites_are_kept_apart(tmp_path: Path) -> None:
    a, b = encode(make_frames(2), camera="cam1"), encode(make_frames(2, seed=3), camera="cam2")
    with Archive(tmp_path) as archive:
        for r in a:
            archive.store(r, "north")
            archive.store(r, "south")  # the same camera id at another site is another camera
        for r in b:
            archive.store(r, "north")
    assert len(rows(tmp_path, "north", "cam1")) == len(rows(tmp_path, "south", "cam1")) == 2
    assert len(rows(tmp_path, "north", "cam2")) == 2
    with pytest.raises(ArchiveError, match="several sites"):
        list(iter_frames(tmp_path, "cam1"))
    assert len(list(iter_frames(tmp_path, "cam1", site="south"))) == 2
