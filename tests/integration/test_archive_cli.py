"""``cctv-agent archive …`` as a user runs it: a real subprocess on an archive of real footage."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.archive import Archive
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import pack_record
from tests.fixtures.data import PETS_CUT

REPO = Path(__file__).resolve().parents[2]
T0 = 1_709_294_400 * 10**9  # 2024-03-01T12:00:00Z
N = 10


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "archive", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def pets_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[npt.NDArray[np.uint8]]]:
    capture = cv2.VideoCapture(str(PETS_CUT))
    frames = [capture.read()[1] for _ in range(N)]
    capture.release()
    encoder = FrameEncoder("cam1", CodecSettings(max_key_interval_frames=4, max_key_interval_s=0.0))
    root = tmp_path_factory.mktemp("archive")
    with Archive(root) as archive:
        for i, f in enumerate(frames):
            archive.store(pack_record(encoder.encode(f, T0 + i * 100_000_000)), "lab")
    return root, frames


def test_info_json(pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]]) -> None:
    root, frames = pets_archive
    done = cli("info", root, "--json")
    assert done.returncode == 0, done.stderr
    (c,) = json.loads(done.stdout)
    assert (c["site"], c["camera"], c["frames"], c["keys"]) == ("lab", "cam1", N, 3)
    assert (c["first_ns"], c["last_ns"]) == (T0, T0 + (N - 1) * 100_000_000)
    assert c["raw_bytes"] == N * frames[0].nbytes
    assert c["stored_bytes"] == sum(p.stat().st_size for p in root.glob("lab/cam1/*/segment-*.cctv"))
    assert (c["missing"], c["orphans"]) == (0, 0)
    table = cli("info", root)
    assert table.returncode == 0
    assert "camera cam1" in table.stdout
    assert "2024-03-01T12:00:00.000Z .. 2024-03-01T12:00:00.900Z" in table.stdout


def _copy_with_seq_5_damaged(root: Path, tmp_path: Path) -> Path:
    """A copy of the archive with one bit of seq 5's payload flipped (its group: keys 4 and 8)."""
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with closing(sqlite3.connect(copy / "lab" / "cam1" / "index.sqlite")) as conn:
        day, segment, offset, size = conn.execute(
            "SELECT day, segment, offset, size FROM records WHERE seq = 5"
        ).fetchone()
    path = copy / "lab" / "cam1" / day / f"segment-{segment:06d}.cctv"
    with path.open("r+b") as f:
        f.seek(offset + size - 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x80]))
    return copy


def test_verify_exit_status_follows_the_data(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    root, _ = pets_archive
    done = cli("verify", root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{N} records, {N} decoded: OK" in done.stdout
    copy = _copy_with_seq_5_damaged(root, tmp_path)
    done = cli("verify", copy)
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
    assert problems[0].startswith("PROBLEM: lab/cam1 seq=5 (2024-03-01/segment-000001 @ ")
    assert "checksum mismatch" in problems[0]
    assert [p.split()[2] for p in problems] == ["seq=5", "seq=6", "seq=7"]  # the rest of the chain
    assert "10 records, 7 decoded: 3 problem(s)" in done.stdout
    assert cli("verify", tmp_path / "nothing").returncode == 1


def test_info_and_verify_take_only_the_cameras_asked_for(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    """A fleet's archive holds many cameras; one can be looked at or verified alone (by camera, by site), and
    one that is not there is an error naming what is, not an empty report that reads as all well."""
    root, frames = pets_archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    encoder = FrameEncoder("cam2", CodecSettings())
    with Archive(copy) as archive:
        for i, f in enumerate(frames[:3]):
            archive.store(pack_record(encoder.encode(f, T0 + i * 100_000_000)), "yard")
    every = json.loads(cli("info", copy, "--json").stdout)
    assert [(c["site"], c["camera"], c["frames"]) for c in every] == [("lab", "cam1", N), ("yard", "cam2", 3)]
    for args, expected in (
        (["--camera", "cam2"], [("yard", "cam2")]),
        (["--site", "lab"], [("lab", "cam1")]),
    ):
        done = cli("info", copy, "--json", *args)
        assert done.returncode == 0, done.stderr
        assert [(c["site"], c["camera"]) for c in json.loads(done.stdout)] == expected
    done = cli("verify", copy, "--camera", "cam2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{copy}: 1 cameras, 3 records, 3 decoded: OK" in done.stdout
    done = cli("verify", copy, "--camera", "cam1", "--camera", "cam2", "--jobs", "2")
    assert f"{copy}: 2 cameras, {N + 3} records, {N + 3} decoded: OK" in done.stdout
    for command in ("info", "verify"):
        done = cli(command, copy, "--camera", "cam3", "--site", "lab")
        assert done.returncode == 1
        assert f"archive {copy}: no camera 'cam3' there; it holds lab/cam1, yard/cam2" in done.stderr
        assert "Traceback" not in done.stderr
    (copy / "yard" / "cam2" / "index.sqlite").unlink()  # segments without an index: verify's to report
    done = cli("verify", copy, "--camera", "cam2")
    assert done.returncode == 1
    assert "PROBLEM: yard/cam2: " in done.stdout
    assert "has segments but no index" in done.stdout


def test_verify_takes_a_time_range_and_decodes_its_first_frames_from_their_key(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    """Frames 0.1 s apart from 12:00:00, keys at seqs 0, 4 and 8, seq 5 damaged: a range that starts at
    seq 6 still finds 6 and 7 undecodable (their chain runs through 5, before the range); one that ends
    before 5 is clean."""
    root, _ = pets_archive
    copy = _copy_with_seq_5_damaged(root, tmp_path)
    done = cli("verify", copy, "--from", "2024-03-01T12:00:00.6")
    assert done.returncode == 1
    problems = [line.split()[2] for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
    assert problems == ["seq=6", "seq=7"]
    assert "4 records, 2 decoded: 2 problem(s)" in done.stdout
    report = json.loads(cli("verify", copy, "--from", "2024-03-01T12:00:00.6", "--json").stdout)
    assert (report["ok"], report["cameras"], report["records"], report["decoded"]) == (False, 1, 4, 2)
    assert [p.split()[1] for p in report["problems"]] == ["seq=6", "seq=7"]
    assert report["root"] == str(copy)
    done = cli("verify", copy, "--to", "2024-03-01T12:00:00.5")
    assert done.returncode == 0, done.stdout
    assert "5 records, 5 decoded: OK" in done.stdout
    done = cli(
        "verify", copy, "--from", "2024-03-01T12:00:00.85", "--to", "2024-03-01T12:00:01", "--jobs", "2"
    )
    assert "1 records, 1 decoded: OK" in done.stdout  # seq 9, from key 8
    done = cli("verify", copy, "--from", "2024-03-01T12:00:01", "--to", "2024-03-01T12:00:00")
    assert done.returncode == 1
    assert "is not before --to" in done.stderr


def test_export_png_with_iso_range(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    root, frames = pets_archive
    out = tmp_path / "png"
    done = cli(
        "export", root, "--camera", "cam1", "--from", "2024-03-01T12:00:00.250", "--to", "2024-03-01T13:00:00.6+01:00",
        "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{s:08d}.png" for s in (3, 4, 5)]
    for f in files:
        assert np.array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), frames[int(f.stem)])


def test_export_refuses_what_it_cannot_do_before_writing_anything(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    """A video kind it does not write (not a PNG folder named clip.avi), an empty or reversed range (saying
    what the camera holds), a root that is not an archive: each a clear error, and nothing on disk."""
    root, _ = pets_archive
    cases = [
        (["--out", tmp_path / "clip.avi"], "clip.avi: export writes OUT.mkv (FFV1, lossless), OUT.mp4"),
        (
            ["--out", tmp_path / "r", "--from", "2024-03-01T12:00:01", "--to", "2024-03-01T12:00:00"],
            "--from 2024-03-01T12:00:01+00:00 is not before --to 2024-03-01T12:00:00+00:00",
        ),
        (
            ["--out", tmp_path / "late", "--from", "2024-03-02"],
            "camera 'cam1': no records in that range; it holds records from 2024-03-01T12:00:00.000Z to "
            "2024-03-01T12:00:00.900Z",
        ),
    ]
    for args, message in cases:
        done = cli("export", root, "--camera", "cam1", *args)
        assert done.returncode == 1, args
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    done = cli("export", tmp_path, "--camera", "cam1", "--out", tmp_path / "x")
    assert done.returncode == 1
    assert f"archive {tmp_path}: no VERSION file, not an archive" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_png_writes_every_frame_exactly_and_stops_at_a_failed_write(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    """The PNGs are compressed by several threads while the frames decode: every one still exact, and a
    write that fails (here: a directory where one PNG goes) ends the export with that path, no traceback."""
    root, frames = pets_archive
    out = tmp_path / "all"
    done = cli("export", root, "--camera", "cam1", "--out", out)
    assert done.returncode == 0, done.stderr
    assert sorted(f.name for f in out.iterdir()) == [f"{s:08d}.png" for s in range(N)]
    for f in out.iterdir():
        assert np.array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), frames[int(f.stem)])
    blocked = tmp_path / "blocked"
    (blocked / "00000004.png").mkdir(parents=True)
    done = cli("export", root, "--camera", "cam1", "--out", blocked)
    assert done.returncode == 1
    assert "00000004.png: Is a directory" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_export_ffv1_is_exact(pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path) -> None:
    root, frames = pets_archive
    out = tmp_path / "clip.mkv"
    done = cli("export", root, "--camera", "cam1", "--site", "lab", "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"{N} frames (ffv1 at 10 fps)" in done.stdout
    capture = cv2.VideoCapture(str(out))
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    capture.release()
    assert len(decoded) == N
    assert all(np.array_equal(d, f) for d, f in zip(decoded, frames, strict=True))


@pytest.mark.parametrize(
    "args",
    [
        ("export", "{root}", "--camera", "../etc", "--out", "{tmp}/x"),
        ("export", "{root}", "--camera", "cam1", "--site", "/etc", "--out", "{tmp}/x"),
        ("export", "{root}", "--camera", "nobody", "--out", "{tmp}/x"),
        ("export", "{root}", "--camera", "cam1", "--from", "yesterday", "--out", "{tmp}/x"),
        ("info", "{tmp}/not-an-archive"),
    ],
)
def test_bad_requests_fail_cleanly(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path, args: tuple[str, ...]
) -> None:
    root, _ = pets_archive
    done = cli(*(a.format(root=root, tmp=tmp_path) for a in args))
    assert done.returncode in (1, 2)
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_prune_deletes_the_oldest_groups(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]], tmp_path: Path
) -> None:
    root, _ = pets_archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert cli("prune", copy, "--camera", "cam1").returncode == 1, "a limit is required"
    done = cli("prune", copy, "--camera", "cam1", "--max-bytes", "1")
    assert done.returncode == 0, done.stderr
    assert "deleted 3 groups, 10 records" in done.stdout
    (c,) = json.loads(cli("info", copy, "--json").stdout)
    assert (c["frames"], c["segments"]) == (0, 0)
    assert cli("verify", copy).returncode == 0


def test_output_into_a_closed_pipe_stops_quietly(
    pets_archive: tuple[Path, list[npt.NDArray[np.uint8]]],
) -> None:
    """`cctv-agent archive info ROOT | head -1` and the like: no traceback, no 'Broken pipe' error line."""
    root, _ = pets_archive
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write fails, whatever the timing
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent", "archive", "info", str(root)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == b"", done.stderr
