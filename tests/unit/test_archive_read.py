"""Frames back out of an archive of real footage: bit-exact reads, time ranges, exports, verify and info."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.archive import Archive, iter_frames
from agent.archive.export import export
from agent.archive.maintenance import camera_info, info, verify
from agent.archive.reader import CameraReader
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import Kind, pack_record, unpack_record
from agent.errors import ArchiveError
from tests.fixtures.data import PETS_CUT

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
STEP = timedelta(milliseconds=40)
N = 16
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

Frames = list[npt.NDArray[np.uint8]]


@pytest.fixture(scope="module")
def pets() -> tuple[Frames, list[bytes]]:
    capture = cv2.VideoCapture(str(PETS_CUT))
    frames: Frames = []
    while len(frames) < N:
        ok, image = capture.read()
        assert ok, f"{PETS_CUT} has fewer than {N} frames"
        frames.append(image)
    capture.release()
    encoder = FrameEncoder("cam1", CodecSettings(max_key_interval_frames=6, max_key_interval_s=0.0))
    t0 = int(T0.timestamp()) * 10**9
    records = [pack_record(encoder.encode(f, t0 + i * 40_000_000)) for i, f in enumerate(frames)]
    return frames, records


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory: pytest.TempPathFactory, pets: tuple[Frames, list[bytes]]) -> Path:
    root = tmp_path_factory.mktemp("pets-archive")
    with Archive(root) as archive:
        for r in pets[1]:
            archive.store(r, "lab")
    return root


def test_every_frame_comes_back_bit_for_bit(archive_root: Path, pets: tuple[Frames, list[bytes]]) -> None:
    got = list(iter_frames(archive_root, "cam1"))
    assert [h.seq for h, _ in got] == list(range(N))
    for (_, image), original in zip(got, pets[0], strict=True):
        assert np.array_equal(image, original)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (T0 + 5 * STEP, T0 + 9 * STEP, [5, 6, 7, 8]),  # starts mid-group: 0..4 decoded, not yielded
        ((T0 + 13 * STEP).replace(tzinfo=None), None, [13, 14, 15]),  # naive means UTC
        (None, T0 + STEP, [0]),
        (int(T0.timestamp()) * 10**9 + 2 * 40_000_000, int(T0.timestamp()) * 10**9 + 40_000_000 * 4, [2, 3]),
        (T0 + 100 * STEP, None, []),
    ],
)
def test_time_range(
    archive_root: Path, pets: tuple[Frames, list[bytes]], start: object, end: object, expected: list[int]
) -> None:
    got = list(iter_frames(archive_root, "cam1", site="lab", start=start, end=end))  # type: ignore[arg-type]
    assert [h.seq for h, _ in got] == expected
    assert all(np.array_equal(image, pets[0][h.seq]) for h, image in got)


def test_png_export_equals_the_original_frames(
    archive_root: Path, pets: tuple[Frames, list[bytes]], tmp_path: Path
) -> None:
    result = export(archive_root, "cam1", tmp_path / "png", start=T0 + 3 * STEP)
    assert (result.format, result.frames) == ("png", N - 3)
    files = sorted((tmp_path / "png").iterdir())
    assert [f.name for f in files] == [f"{seq:08d}.png" for seq in range(3, N)]
    for f in files:
        assert np.array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), pets[0][int(f.stem)])


def ffmpeg_frames(path: Path, shape: tuple[int, ...]) -> Frames:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    size = int(np.prod(shape))
    assert len(raw) % size == 0
    return [np.frombuffer(raw[i : i + size], np.uint8).reshape(shape) for i in range(0, len(raw), size)]


@needs_ffmpeg
def test_ffv1_export_is_lossless(
    archive_root: Path, pets: tuple[Frames, list[bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "clip.mkv"
    result = export(archive_root, "cam1", out, fps=25.0)
    assert (result.format, result.frames, result.fps) == ("ffv1", N, 25.0)
    decoded = ffmpeg_frames(out, pets[0][0].shape)
    assert len(decoded) == N
    for got, original in zip(decoded, pets[0], strict=True):
        assert np.array_equal(got, original)
    assert not list(tmp_path.glob(".*part")), "the temporary file was renamed"


@needs_ffmpeg
def test_h264_preview_export(archive_root: Path, pets: tuple[Frames, list[bytes]], tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    result = export(archive_root, "cam1", out)
    assert (result.format, result.frames, result.fps) == ("h264", N, 25.0)  # 40 ms apart
    decoded = ffmpeg_frames(out, pets[0][0].shape)
    assert len(decoded) == N
    error = np.mean([np.abs(g.astype(int) - o).mean() for g, o in zip(decoded, pets[0], strict=True)])
    assert error < 8, "a preview: close, not exact"


def test_video_export_refuses_an_empty_range(archive_root: Path, tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    with pytest.raises(ArchiveError, match="no frames"):
        export(archive_root, "cam1", tmp_path / "x.mkv", start=T0 + 1000 * STEP)
    assert list(tmp_path.iterdir()) == []


def test_verify_names_the_corrupted_record(archive_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(archive_root, copy)
    assert verify(copy).ok
    with CameraReader(copy, "lab", "cam1") as reader:
        victim = reader.row(8)
    assert victim is not None
    assert victim.kind is Kind.MEMBER
    segment = copy / "lab" / "cam1" / victim.day / f"segment-{victim.segment:06d}.cctv"
    data = bytearray(segment.read_bytes())
    data[victim.offset + victim.size // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    report = verify(copy)
    assert not report.ok
    assert "seq=8" in report.problems[0]
    assert "checksum mismatch" in report.problems[0]
    failed = sorted(int(p.split("seq=")[1].split()[0]) for p in report.problems)
    assert failed == [8, 9, 10, 11], "the rest of its group (a chain) cannot be decoded either"
    assert [h.seq for h, _ in iter_frames(copy, "cam1")] == [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]


def test_verify_in_parallel_gives_the_serial_report(tmp_path: Path, pets: tuple[Frames, list[bytes]]) -> None:
    """Three cameras, one with a damaged record: verified one camera a process, the report is the serial
    one (counts, problems in camera order) and the progress callback still sees every record."""
    frames, _ = pets
    with Archive(tmp_path) as archive:
        for camera in ("cam-a", "cam-b", "cam-c"):
            encoder = FrameEncoder(camera, CodecSettings(max_key_interval_frames=6, max_key_interval_s=0.0))
            for i, f in enumerate(frames):
                archive.store(pack_record(encoder.encode(f, i * 40_000_000)), "lab")
    with CameraReader(tmp_path, "lab", "cam-b") as reader:
        victim = reader.row(8)
    assert victim is not None
    segment = tmp_path / "lab" / "cam-b" / victim.day / f"segment-{victim.segment:06d}.cctv"
    data = bytearray(segment.read_bytes())
    data[victim.offset + victim.size // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    serial = verify(tmp_path)
    seen: list[int] = []
    parallel = verify(tmp_path, on_record=lambda: seen.append(1), jobs=3)
    assert (parallel.cameras, parallel.records, parallel.decoded) == (3, 3 * N, 3 * N - 4)
    assert parallel.problems == serial.problems
    assert parallel.notes == serial.notes
    assert all("cam-b seq=" in p for p in parallel.problems)
    assert len(seen) == 3 * N


def test_verify_catches_a_wrong_frame_hash_behind_a_valid_crc(
    tmp_path: Path, pets: tuple[Frames, list[bytes]]
) -> None:
    record = unpack_record(pets[1][0])
    forged = type(record)(
        type(record.header)(**{**_fields(record.header), "frame_hash": bytes(32)}), record.payload
    )
    with Archive(tmp_path) as archive:
        archive.store(pack_record(forged), "lab")
    report = verify(tmp_path)
    assert len(report.problems) == 1
    assert "seq=0" in report.problems[0]
    assert "does not match its hash" in report.problems[0]


def _fields(header: object) -> dict[str, object]:
    return {name: getattr(header, name) for name in header.__slots__}  # type: ignore[attr-defined]


def test_verify_of_a_missing_or_foreign_root(tmp_path: Path) -> None:
    assert not verify(tmp_path).ok
    tmp_path.joinpath("VERSION").write_text("9\n")
    assert "layout version" in verify(tmp_path).problems[0]


def test_info_numbers(tmp_path: Path, pets: tuple[Frames, list[bytes]]) -> None:
    frames, records = pets
    stored = [r for i, r in enumerate(records) if i != 3]  # seq 3 lost: 4 and 5 chain on it
    with Archive(tmp_path) as archive:
        for r in stored:
            archive.store(r, "lab")
    (c,) = info(tmp_path)
    t0 = int(T0.timestamp()) * 10**9
    assert (c.site, c.camera, c.first_ns, c.last_ns) == ("lab", "cam1", t0, t0 + (N - 1) * 40_000_000)
    assert c.frames == N - 1
    assert c.keys == sum(unpack_record(r).header.kind is Kind.KEY for r in stored) == 3
    assert c.stored_bytes == c.disk_bytes == sum(map(len, stored))
    assert c.raw_bytes == (N - 1) * frames[0].nbytes
    assert c.ratio == pytest.approx(c.raw_bytes / c.stored_bytes)
    assert c.ratio > 3
    assert (c.missing, c.gaps, c.orphans, c.segments) == (1, [(3, 3)], 2, 1)
    assert camera_info(tmp_path, "lab", "cam1").as_dict()["gaps"] == [[3, 3]]
