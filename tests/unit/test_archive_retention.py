"""Retention deletes whole key groups, oldest first, and the segments and days they leave empty."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from agent.archive import Archive, iter_frames
from agent.archive.maintenance import plan_retention, verify
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import pack_record, unpack_record

DAY = 86_400 * 10**9
T0 = 1_700_006_400 * 10**9  # 2023-11-15T00:00:00Z


def groups_over_days(tmp_path: Path, segment_max_bytes: int = 1 << 30) -> tuple[Path, list[bytes]]:
    """4 groups of 4 records: groups 0 and 1 on day one, 2 and 3 on day two."""
    base = np.random.default_rng(5).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    encoder = FrameEncoder("cam1", CodecSettings(max_key_interval_frames=4, max_key_interval_s=0.0))
    records = []
    for i in range(16):
        img = base.copy()
        img[i % 24] = 9 * i
        t = T0 + (i // 8) * DAY + i * 10**9
        records.append(pack_record(encoder.encode(img, t)))
    assert [unpack_record(r).header.key_seq for r in records] == [0] * 4 + [4] * 4 + [8] * 4 + [12] * 4
    root = tmp_path / "archive"
    with Archive(root, segment_max_bytes=segment_max_bytes) as archive:
        for r in records:
            archive.store(r, "site1")
    return root, records


def seqs(root: Path) -> list[int]:
    with closing(sqlite3.connect(root / "site1" / "cam1" / "index.sqlite")) as conn:
        return [s for (s,) in conn.execute("SELECT seq FROM records ORDER BY seq")]


def test_plan_takes_a_prefix_by_age_then_by_bytes() -> None:
    groups = [(0, 100, 10), (4, 200, 10), (8, 300, 10), (12, 400, 10)]
    assert plan_retention(groups, [], None, None, 0) == []
    assert plan_retention(groups, [], 0, None, 250) == [0, 4]  # newest record older than now - 0 days
    assert plan_retention(groups, [], None, 25, 0) == [0, 4]
    assert plan_retention(groups, [], None, 0, 0) == [0, 4, 8, 12]
    assert plan_retention(groups, [], None, 40, 0) == []
    assert plan_retention(groups, [], 1.0, None, 250 + DAY) == [0, 4]


def test_plan_never_deletes_a_group_a_kept_group_refers_into() -> None:
    groups = [(0, 100, 10), (4, 200, 10), (8, 300, 10), (12, 400, 10)]
    assert plan_retention(groups, [(4, 8)], None, 25, 0) == [0]  # 8 refers into 4 and is kept: 4 stays
    assert plan_retention(groups, [(4, 8)], None, 15, 0) == [0, 4, 8]  # 8 goes too: 4 may go
    with pytest.raises(ValueError, match="max_bytes"):
        plan_retention(groups, [], None, -1, 0)


def test_retention_by_bytes_deletes_whole_groups_and_emptied_segments(tmp_path: Path) -> None:
    root, records = groups_over_days(tmp_path, segment_max_bytes=1)  # one record per segment
    size = [len(r) for r in records]
    keep_from_group_2 = sum(size[8:])
    with Archive(root) as archive:
        result = archive.apply_retention("cam1", max_bytes=keep_from_group_2 + sum(size[4:8]) - 1)
    assert (result.groups, result.records, result.bytes, result.segments) == (2, 8, sum(size[:8]), 8)
    assert seqs(root) == list(range(8, 16))
    days = sorted(p.name for p in (root / "site1" / "cam1").iterdir() if p.is_dir())
    assert days == ["2023-11-16"], "the emptied day is gone"
    assert len(list(root.glob("site1/cam1/*/segment-*.cctv"))) == 8
    assert [h.seq for h, _ in iter_frames(root, "cam1")] == list(range(8, 16))
    assert verify(root).ok


def test_retention_by_age_keeps_partly_used_segments(tmp_path: Path) -> None:
    root, records = groups_over_days(tmp_path)
    newest_of_group_0 = T0 + 3 * 10**9
    with Archive(root) as archive:
        result = archive.apply_retention(
            "cam1", site="site1", max_age_days=1.0, now_ns=newest_of_group_0 + DAY + 1
        )
        assert (result.groups, result.records, result.segments) == (1, 4, 0)
        assert seqs(root) == list(range(4, 16))
        segment = root / "site1" / "cam1" / "2023-11-15" / "segment-000001.cctv"
        assert segment.stat().st_size == sum(map(len, records[:8])), "day one's segment still holds group 1"
        # the archive keeps working: new records after retention, old days untouched
        result = archive.apply_retention("cam1", max_age_days=0.0, now_ns=T0 + 10 * DAY)
        assert result.records == 12
        assert [p for p in (root / "site1" / "cam1").iterdir() if p.is_dir()] == [], "every day is gone"
        assert archive.store(records[0], "site1").value == "stored"  # a late copy is archived again
    assert seqs(root) == [0]


def test_interrupted_retirement_is_finished_at_open(tmp_path: Path) -> None:
    root, _ = groups_over_days(tmp_path, segment_max_bytes=1)
    doomed = root / "site1" / "cam1" / "2023-11-15" / "segment-000001.cctv"
    with closing(sqlite3.connect(root / "site1" / "cam1" / "index.sqlite")) as conn, conn:
        # what a crash right after step 1 leaves: rows gone, segment marked, file still there
        conn.execute("DELETE FROM records WHERE day = '2023-11-15' AND segment = 1")
        conn.execute("UPDATE segments SET retired = 1 WHERE day = '2023-11-15' AND number = 1")
    assert doomed.exists()
    with Archive(root) as archive:
        archive.recover_all()
    assert not doomed.exists()
    assert seqs(root) == list(range(1, 16)), "the deleted record did not come back through recovery"
