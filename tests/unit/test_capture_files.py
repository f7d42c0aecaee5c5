"""Replay sources on real files: the committed clip, PNG folders written here, broken and missing inputs."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture import ffmpeg
from agent.capture.files import ImageFolderSource, VideoFileSource, iter_images, open_path
from agent.codec import yuv
from agent.errors import CaptureError


def _direct_frames(path: Path, limit: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < limit:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def _write(path: Path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), image), path


def _pattern(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --- video files -----------------------------------------------------------------------------------------


def _ffmpeg_frames(path: Path, limit: int) -> list[np.ndarray]:
    """The first frames as the ``ffmpeg`` command decodes them, converted by the numpy path of ``yuv``."""
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-frames:v", str(limit), "-f", "rawvideo",
         "-pix_fmt", "yuv420p", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    size = yuv.picture_bytes(768, 576)
    return [yuv.to_bgr_numpy(raw[i : i + size], 768, 576) for i in range(0, len(raw), size)]


needs_ffmpeg = pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")


@pytest.mark.parametrize("decoder", ["opencv", pytest.param("ffmpeg", marks=needs_ffmpeg)])
def test_video_yields_every_frame_in_order(pets_cut: Path, decoder: str) -> None:
    expected = _direct_frames(pets_cut, 3) if decoder == "opencv" else _ffmpeg_frames(pets_cut, 3)
    with VideoFileSource(pets_cut, decoder=decoder) as source:
        assert source.decoded_by == decoder
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
        assert source.read() is None
    assert 100 <= len(frames) <= 130  # the cut is 120 frames; decoders may differ by one at the end
    assert [f.source_index for f in frames] == list(range(len(frames)))
    for frame in frames:
        assert frame.image.shape == (576, 768, 3)
        assert frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous
    for got, want in zip(frames, expected, strict=False):
        np.testing.assert_array_equal(got.image, want)
    assert not np.array_equal(frames[0].image, frames[-1].image)  # people walk: the clip is not one still
    walls = [f.wall_time_ns for f in frames]
    assert walls == sorted(walls)


@pytest.mark.parametrize("decoder", ["opencv", pytest.param("ffmpeg", marks=needs_ffmpeg)])
def test_video_reports_container_fps(pets_cut: Path, decoder: str) -> None:
    source = VideoFileSource(pets_cut, decoder=decoder)
    assert source.fps == 0.0
    with source:
        assert source.fps == pytest.approx(10.0)


@pytest.mark.parametrize("decoder", ["opencv", pytest.param("ffmpeg", marks=needs_ffmpeg)])
def test_video_loop_starts_over_with_the_same_pixels(pets_cut: Path, decoder: str) -> None:
    with VideoFileSource(pets_cut, loop=True, decoder=decoder) as source:
        first = source.read()
        assert first is not None
        count = 1
        while (frame := source.read()) is not None and frame.source_index != 0:
            count += 1
            assert count < 200, "the loop never restarted"
    assert frame is not None
    assert count >= 100
    np.testing.assert_array_equal(frame.image, first.image)


@pytest.mark.parametrize(
    ("content", "decoder", "reason"),
    [
        (None, "auto", "no such file"),
        (b"not a video" * 100, "auto", "OpenCV cannot open"),  # ffprobe refuses it, then OpenCV does
        (b"not a video" * 100, "opencv", "OpenCV cannot open"),
        pytest.param(
            b"not a video" * 100, "ffmpeg", "ffprobe cannot read it: .*Invalid data", marks=needs_ffmpeg
        ),
    ],
)
def test_video_that_cannot_be_opened_raises_with_path_and_reason(
    tmp_path: Path, content: bytes | None, decoder: str, reason: str
) -> None:
    path = tmp_path / "broken.avi"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaptureError, match=reason) as info:
        VideoFileSource(path, decoder=decoder).open()
    assert str(path) in str(info.value)


@pytest.mark.parametrize("decoder", ["auto", "opencv", pytest.param("ffmpeg", marks=needs_ffmpeg)])
def test_truncated_video_header_raises(tmp_path: Path, pets_cut: Path, decoder: str) -> None:
    path = tmp_path / "truncated.avi"
    path.write_bytes(pets_cut.read_bytes()[:3000])
    with pytest.raises(CaptureError, match=str(path)):
        VideoFileSource(path, decoder=decoder).open()


def test_unknown_decoder_is_refused(pets_cut: Path) -> None:
    with pytest.raises(CaptureError, match="unknown decoder 'gstreamer'"):
        VideoFileSource(pets_cut, decoder="gstreamer")


def test_video_read_before_open_raises_and_close_twice_is_safe(pets_cut: Path) -> None:
    source = VideoFileSource(pets_cut)
    with pytest.raises(CaptureError, match="before open"):
        source.read()
    source.open()
    source.open()  # already open: no second capture, the first frame is still pending
    frame = source.read()
    assert frame is not None
    assert frame.source_index == 0
    source.close()
    source.close()


# --- image folders ---------------------------------------------------------------------------------------


def test_folder_yields_images_sorted_by_name_and_normalised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    colour = _pattern(1, (24, 32, 3))
    grey = _pattern(2, (24, 32))
    bgra = _pattern(3, (24, 32, 4))
    last = _pattern(4, (24, 32, 3))
    _write(tmp_path / "b.png", grey)
    _write(tmp_path / "a.PNG", colour)
    _write(tmp_path / "c.png", bgra)
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    _write(tmp_path / "e.bmp", last)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"resource fork")

    with caplog.at_level(logging.WARNING), ImageFolderSource(tmp_path) as source:
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)

    assert [f.source_index for f in frames] == [0, 1, 2, 4]  # d.png (3) is unreadable and skipped
    np.testing.assert_array_equal(frames[0].image, colour)
    np.testing.assert_array_equal(frames[1].image, grey)
    assert frames[1].image.shape == (24, 32)
    np.testing.assert_array_equal(frames[2].image, bgra[:, :, :3])
    assert frames[2].image.flags.c_contiguous
    np.testing.assert_array_equal(frames[3].image, last)
    assert any("d.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_folder_refuses_16_bit_images(tmp_path: Path) -> None:
    deep = np.full((8, 8), 40000, dtype=np.uint16)
    _write(tmp_path / "deep.png", deep)
    with ImageFolderSource(tmp_path) as source, pytest.raises(CaptureError, match=r"uint16.*8-bit") as info:
        source.read()
    assert "deep.png" in str(info.value)


def test_folder_loop_starts_over(tmp_path: Path) -> None:
    images = [_pattern(i, (8, 8, 3)) for i in range(3)]
    for i, image in enumerate(images):
        _write(tmp_path / f"{i:04d}.png", image)
    with ImageFolderSource(tmp_path, loop=True) as source:
        frames = [source.read() for _ in range(7)]
    assert [f.source_index for f in frames if f is not None] == [0, 1, 2, 0, 1, 2, 0]
    assert frames[3] is not None
    np.testing.assert_array_equal(frames[3].image, images[0])


def test_empty_and_missing_folders_raise(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(CaptureError, match="no images"):
        ImageFolderSource(tmp_path).open()
    with pytest.raises(CaptureError, match="no such directory"):
        ImageFolderSource(tmp_path / "absent").open()


@pytest.mark.parametrize("loop", [False, True])
def test_folder_of_only_unreadable_images_raises_instead_of_spinning(
    tmp_path: Path, loop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with ImageFolderSource(tmp_path, loop=loop) as source, pytest.raises(CaptureError, match="none of its 1"):
        source.read()


# --- helpers ---------------------------------------------------------------------------------------------


def test_open_path_picks_the_source_by_kind(tmp_path: Path, pets_cut: Path) -> None:
    assert isinstance(open_path(tmp_path), ImageFolderSource)
    assert isinstance(open_path(pets_cut), VideoFileSource)
    with pytest.raises(CaptureError, match="no such file"), open_path(tmp_path / "nothing.mp4"):
        pass


def test_iter_images_stops_at_the_limit(pets_cut: Path) -> None:
    images = list(iter_images(pets_cut, limit=5, decoder="opencv"))
    assert len(images) == 5
    for got, want in zip(images, _direct_frames(pets_cut, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(iter_images(pets_cut, limit=0)) == []
