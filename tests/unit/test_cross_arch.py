"""benchmarks/cross_arch.py: it must tell two machines' streams apart when their bytes differ.

``.ci/arm64-check`` rests on it (a Pi's arm64 build against this machine's), so the comparison is tested here on
one machine: two writes of the same frames compare equal, and a stream with one payload byte changed (a valid
record, CRC and all) is reported, as is a header field that moved.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agent.codec.wire import Record, pack_record
from benchmarks import cross_arch

SCRIPT = Path(cross_arch.__file__)


@pytest.fixture
def frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cross_arch, "LTA", tmp_path / "absent")  # the PETS frames alone: quick
    cross_arch.make_frames(tmp_path / "frames", video_frames=4, stills=2)
    return tmp_path / "frames"


def _rewrite(path: Path, records: list[Record]) -> None:
    path.write_bytes(b"".join(pack_record(r) for r in records))


def test_two_writes_of_the_same_frames_compare_equal_and_a_changed_byte_does_not(
    frames: Path, tmp_path: Path
) -> None:
    images = cross_arch.read_frames(frames)
    assert len(images) == 6
    cross_arch.write_streams(images, tmp_path / "a")
    cross_arch.write_streams(images, tmp_path / "b")
    for name, settings in cross_arch.SETTINGS.items():
        first = cross_arch.read_stream(tmp_path / "a" / f"{name}.cctv")
        second = cross_arch.read_stream(tmp_path / "b" / f"{name}.cctv")
        assert cross_arch.compare_streams(images, first, second, settings.tolerance) == ([], 0.0)

    lossless = cross_arch.read_stream(tmp_path / "b" / "lossless.cctv")
    changed = bytearray(lossless[2].payload)
    changed[len(changed) // 2] ^= 0x10
    _rewrite(
        tmp_path / "b" / "lossless.cctv",
        [*lossless[:2], replace(lossless[2], payload=bytes(changed)), *lossless[3:]],
    )
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "compare", str(frames), str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "record 2: payloads differ" in run.stdout
    assert "second stream, record 2: does not decode" in run.stdout
    assert "t2: the same payloads, both decode" in run.stdout


def test_a_header_that_moved_is_reported(frames: Path, tmp_path: Path) -> None:
    images = cross_arch.read_frames(frames)
    cross_arch.write_streams(images, tmp_path / "a")
    ours = cross_arch.read_stream(tmp_path / "a" / "lossless.cctv")
    theirs = [
        replace(r, header=replace(r.header, capture_time_ns=r.header.capture_time_ns + 1)) for r in ours
    ]
    problems, _ = cross_arch.compare_streams(images, ours, theirs, 0)
    assert problems[0] == "record 0: header fields differ: capture_time_ns"
