"""Video decoded by an ffmpeg child (``agent.capture.ffmpeg``) on real files: which files take it, what ``auto``
does without it, a size change, a file cut short, and that ``close()`` leaves no child behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture import ffmpeg
from agent.capture.files import VideoFileSource, iter_images
from agent.errors import CaptureError

pytestmark = pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")


def _encode(source: Path, out: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(source), *args, str(out)], check=True)
    return out


def _opencv_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (image := capture.read()[1]) is not None:
        frames.append(image)
    capture.release()
    return frames


def test_auto_decodes_yuv420p_video_with_ffmpeg_frame_for_frame(pets_cut: Path) -> None:
    with VideoFileSource(pets_cut) as source:
        assert source.decoded_by == "ffmpeg"
        count = 0
        while (frame := source.read()) is not None:
            assert frame.image.shape == (576, 768, 3)
            count += 1
    assert count == len(_opencv_frames(pets_cut)) == 120


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("-c:v", "ffv1", "-pix_fmt", "bgr0"), "bgr0, not yuv420p"),  # an RGB codec: the child would convert
        (("-c:v", "mjpeg"), "yuvj420p, not yuv420p"),  # full-range 4:2:0
        (("-c:v", "ffv1", "-pix_fmt", "yuv444p"), "yuv444p, not yuv420p"),
    ],
)
def test_other_pictures_stay_with_opencv(
    pets_cut: Path, tmp_path: Path, args: tuple[str, ...], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    clip = _encode(pets_cut, tmp_path / "clip.mkv", "-frames:v", "4", *args)
    caplog.set_level("INFO", logger="agent.capture.ffmpeg")
    with VideoFileSource(clip) as source:
        assert source.decoded_by == "opencv"
        frames = [source.read() for _ in range(4)]
    assert why in caplog.text
    for got, want in zip(frames, _opencv_frames(clip), strict=True):
        assert got is not None
        np.testing.assert_array_equal(got.image, want)
    with pytest.raises(CaptureError, match=f"{why}.*use decoder = 'opencv'"):
        VideoFileSource(clip, decoder="ffmpeg").open()


def test_without_ffmpeg_auto_uses_opencv_and_ffmpeg_says_what_to_install(
    pets_cut: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with neither ffmpeg nor ffprobe on it
    with VideoFileSource(pets_cut) as source:
        assert source.decoded_by == "opencv"
        assert source.read() is not None
    with pytest.raises(CaptureError, match=r"needs ffmpeg and ffprobe on PATH.*apt install ffmpeg"):
        VideoFileSource(pets_cut, decoder="ffmpeg").open()


def test_a_size_change_is_scaled_to_the_first_size_as_opencv_does(pets_cut: Path, tmp_path: Path) -> None:
    """Two MPEG-2 transport streams of different sizes, one after the other: the child keeps the first size,
    so the pipe never falls out of step with the picture size the reader expects."""
    big = _encode(pets_cut, tmp_path / "a.ts", "-frames:v", "8", "-vf", "scale=320:240", "-c:v", "mpeg2video")
    small = _encode(
        pets_cut, tmp_path / "b.ts", "-frames:v", "8", "-vf", "scale=160:120", "-c:v", "mpeg2video"
    )
    both = tmp_path / "ab.ts"
    both.write_bytes(big.read_bytes() + small.read_bytes())
    ours = list(iter_images(both, decoder="ffmpeg"))
    theirs = _opencv_frames(both)
    assert len(ours) == len(theirs) >= 15
    assert {image.shape for image in ours} == {(240, 320, 3)}
    assert np.abs(ours[-1].astype(int) - theirs[-1]).mean() < 3  # the same picture, scaled alike


def test_a_file_cut_short_ends_early_without_an_error(
    pets_cut: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cut = tmp_path / "cut.avi"
    data = pets_cut.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    frames = list(iter_images(cut, decoder="ffmpeg"))
    assert 40 <= len(frames) < 120
    assert all(image.shape == (576, 768, 3) for image in frames)
    full = list(iter_images(pets_cut, limit=len(frames), decoder="ffmpeg"))
    for got, want in zip(frames[:-1], full[:-1], strict=True):  # the last one may be the damaged one
        np.testing.assert_array_equal(got, want)


def test_close_stops_the_child(pets_cut: Path) -> None:
    source = VideoFileSource(pets_cut, decoder="ffmpeg")
    source.open()
    assert source.read() is not None
    child = source._capture
    assert isinstance(child, ffmpeg.FfmpegCapture)
    process = child._process
    assert process is not None
    assert process.poll() is None  # still decoding (the pipe is full)
    source.close()
    assert process.returncode == -9  # killed mid-stream, and reaped
    source.close()


def test_a_corrupt_stream_still_yields_every_frame_and_keeps_only_the_last_messages(
    pets_cut: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Damaged bytes in the middle: the decoder conceals them and says so hundreds of times; every frame still
    comes out, each message is logged at debug level, and only the last few are kept for error reports (a live
    camera's child may complain for days)."""
    data = bytearray(pets_cut.read_bytes())
    for i in range(len(data) // 4, len(data) // 2, 997):
        data[i] ^= 0x5A
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    caplog.set_level("DEBUG", logger="agent.capture.ffmpeg")
    capture = ffmpeg.open_capture(str(damaged), [], 30.0, "damaged")
    try:
        frames = 0
        while capture.read()[0]:
            frames += 1
        said = capture.said()
    finally:
        capture.release()
    assert frames == 120
    logged = [r for r in caplog.records if r.getMessage().startswith("damaged: ffmpeg: ")]
    assert len(logged) > 20
    assert len(capture._said) == 20  # the last 20 lines, quoted up to 600 characters
    assert 0 < len(said) <= 600
    assert said.endswith(logged[-1].getMessage().removeprefix("damaged: ffmpeg: "))


@pytest.mark.skipif(
    ffmpeg.available() and ffmpeg._major_version() < 5,
    reason="FFmpeg before 5.0 takes the URL on its command line",
)
def test_a_network_url_goes_by_stdin_and_a_file_on_the_command_line() -> None:
    url = "rtsp://admin:hunter2@10.0.0.5:554/stream1?token=abc"
    given = ffmpeg.input_arguments(url, ffmpeg.rtsp_options(5.0))
    assert given.script is not None
    assert not any("hunter2" in a or "token" in a or "10.0.0.5" in a for a in given.arguments)
    assert given.arguments[-2:] == ["-i", "pipe:0"]
    assert "option rtsp_transport tcp" in given.script.splitlines()
    assert ffmpeg.input_arguments("/videos/a b.mp4", []) == ffmpeg.InputArguments(
        ["-i", "/videos/a b.mp4"], None
    )


def test_a_script_carries_any_name_to_ffmpeg_as_it_is(pets_cut: Path, tmp_path: Path) -> None:
    """Quotes, spaces, a backslash, a ``#`` and a ``%``: each would end or change an unescaped token."""
    odd = tmp_path / 'it\'s a "clip" #1 \\ 100% {x};$HOME.avi'
    odd.write_bytes(pets_cut.read_bytes())
    # As a URL: the concat demuxer resolves a bare path against the script's own ("pipe:...").
    script = ffmpeg.concat_script(f"file:{odd}", ["-analyzeduration", "500000"])
    done = subprocess.run(
        [
            *(
                "ffprobe",
                "-loglevel",
                "error",
                "-protocol_whitelist",
                "file,pipe",
                "-f",
                "concat",
                "-safe",
                "0",
            ),
            *("-show_entries", "stream=width,height", "-of", "csv=p=0", "-i", "pipe:0"),
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "768,576"


@pytest.mark.parametrize(
    ("target", "options"),
    [
        ("rtsp://cam/a\nfile /etc/passwd", []),
        ("rtsp://cam/a", ["-timeout"]),
        ("rtsp://cam/a", ["timeout", "5"]),
        ("rtsp://cam/a", ["-time out", "5"]),
    ],
)
def test_a_script_refuses_what_it_cannot_carry(target: str, options: list[str]) -> None:
    with pytest.raises(ValueError, match=r"line break|pairs"):
        ffmpeg.concat_script(target, options)
