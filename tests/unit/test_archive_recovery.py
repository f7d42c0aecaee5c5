"""Crash safety: torn tails made by hand and by SIGKILLing a real writer process; nothing committed is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.archive import Archive, StoreOutcome, iter_frames
from agent.archive.maintenance import verify
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import pack_record

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000_000


def make(n: int) -> tuple[list[npt.NDArray[np.uint8]], list[bytes]]:
    base = np.random.default_rng(7).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    encoder = FrameEncoder("cam1", CodecSettings(max_key_interval_frames=5, max_key_interval_s=0.0))
    frames, records = [], []
    for i in range(n):
        img = base.copy()
        img[i % 24] = i
        frames.append(img)
        records.append(pack_record(encoder.encode(img, T0 + i * 40_000_000)))
    return frames, records


def segment(root: Path) -> Path:
    (path,) = root.glob("site1/cam1/*/segment-*.cctv")
    return path


def indexed(root: Path) -> list[int]:
    with closing(sqlite3.connect(root / "site1" / "cam1" / "index.sqlite")) as conn:
        return [s for (s,) in conn.execute("SELECT seq FROM records ORDER BY seq")]


def assert_frames(root: Path, frames: list[npt.NDArray[np.uint8]], seqs: list[int]) -> None:
    got = list(iter_frames(root, "cam1"))
    assert [h.seq for h, _ in got] == seqs
    for h, image in got:
        assert np.array_equal(image, frames[h.seq])


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda r: r[5], id="whole-record"),
        pytest.param(lambda r: r[5] + r[6][:50], id="whole-then-header-half"),
        pytest.param(lambda r: r[5] + r[6][:-1], id="whole-then-all-but-crc-byte"),
        pytest.param(lambda r: r[5][: len(r[5]) // 2], id="half-record"),
        pytest.param(lambda r: b"\x00" * 4096, id="zeros"),
        pytest.param(lambda r: b"CCTV\x01", id="magic-only"),
    ],
)
def test_torn_tail_is_reindexed_or_truncated_at_open(tmp_path: Path, tail) -> None:  # type: ignore[no-untyped-def]
    frames, records = make(8)
    with Archive(tmp_path) as archive:
        for r in records[:5]:
            archive.store(r, "site1")
    committed = segment(tmp_path).read_bytes()
    added = tail(records)
    with segment(tmp_path).open("ab") as f:  # what a crash between write and commit leaves
        f.write(added)
    whole = added.startswith(records[5])
    assert indexed(tmp_path) == [0, 1, 2, 3, 4]
    assert verify(tmp_path).notes, "verify notes the unindexed tail"
    with Archive(tmp_path) as archive:
        assert archive.recover_all() == 1
        expected_tail = records[5] if whole else b""
        assert segment(tmp_path).read_bytes() == committed + expected_tail
        assert indexed(tmp_path) == list(range(6 if whole else 5))
        for r in records[5:]:
            outcome = archive.store(r, "site1")
            assert outcome is (StoreOutcome.DUPLICATE if whole and r is records[5] else StoreOutcome.STORED)
    assert segment(tmp_path).read_bytes() == b"".join(records)
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert not report.notes
    assert_frames(tmp_path, frames, list(range(8)))


def test_lost_index_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    frames, records = make(7)
    with Archive(tmp_path) as archive:
        for i in (0, 1, 3, 4, 5, 6):
            archive.store(records[i], "site1")
    with closing(sqlite3.connect(tmp_path / "site1" / "cam1" / "index.sqlite")) as conn:
        before = conn.execute("SELECT * FROM records ORDER BY seq").fetchall()
    for p in (tmp_path / "site1" / "cam1").glob("index.sqlite*"):
        p.unlink()
    with Archive(tmp_path) as archive:
        archive.recover_all()
    with closing(sqlite3.connect(tmp_path / "site1" / "cam1" / "index.sqlite")) as conn:
        assert conn.execute("SELECT * FROM records ORDER BY seq").fetchall() == before
    assert [r[-1] for r in before] == [1, 1, 0, 0, 1, 1]  # seq 2 never came: 3 and 4 chain on it
    assert_frames(tmp_path, frames, [0, 1, 5, 6])


WRITER = textwrap.dedent(
    """
    import sys
    from agent.archive import Archive
    from agent.codec.cctv_file import iter_records
    from agent.codec.wire import pack_record

    root, source = sys.argv[1], sys.argv[2]
    with open(source, "rb") as f:
        records = [pack_record(r) for r in iter_records(f)]
    archive = Archive(root, autoflush=False)
    for i, data in enumerate(records):
        archive.store(data, "site1")
        if i % 3 == 2:
            archive.flush()
            print(i, flush=True)
    archive.flush()
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("kill_after", [2, 11, 20])
def test_sigkilled_writer_loses_nothing_it_flushed(tmp_path: Path, kill_after: int) -> None:
    frames, records = make(40)
    source = tmp_path / "in.cctv"
    source.write_bytes(b"".join(records))
    root = tmp_path / "archive"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(source)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    flushed = -1
    with proc.stdout:
        for line in proc.stdout:
            flushed = int(line)
            if flushed >= kill_after:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert flushed >= kill_after, "the writer must have flushed before it was killed"
    survived = indexed(root)
    assert survived[: flushed + 1] == list(range(flushed + 1)), "every flushed record is indexed"
    with Archive(root) as archive:
        archive.recover_all()
        recovered = indexed(root)
        assert recovered[: len(survived)] == survived
        assert recovered == list(range(len(recovered)))  # a prefix: nothing earlier lost
        outcomes = [archive.store(r, "site1") for r in records]
    assert outcomes == [StoreOutcome.DUPLICATE] * len(recovered) + [StoreOutcome.STORED] * (
        40 - len(recovered)
    )
    report = verify(root)
    assert report.ok, report.problems
    assert_frames(root, frames, list(range(40)))
