"""Frames out of the archive: lossless PNG files, a lossless FFV1 ``.mkv`` or an H.264 ``.mp4`` preview.

Video goes through the ``ffmpeg`` binary (raw frames piped on its stdin), so nothing here needs a codec
library; PNG needs only OpenCV. The format follows the output's name: ``.mkv`` → FFV1 (``-level 3``, every
pixel kept), ``.mp4`` → H.264 (``-crf 23``, yuv420p: a preview, not evidence), anything else → a directory of
``<seq>.png``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.archive.reader import CameraReader, Image, TimeBound, iter_frames, resolve_site, to_ns
from agent.codec.wire import RecordHeader
from agent.errors import ArchiveError
from agent.png import PngWriter

VIDEO_CODECS = {
    ".mkv": ("matroska", ["-c:v", "ffv1", "-level", "3"]),
    ".mp4": (
        "mp4",
        ["-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
    ),
}
DEFAULT_FPS = 25.0


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    format: str
    """``png``, ``ffv1`` or ``h264``."""
    frames: int
    fps: float | None


OTHER_MEDIA = frozenset(
    (".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".y4m", ".gif", ".png", ".jpg")
)
"""Suffixes of a file someone may well ask for that export does not write: refused rather than taken as the
name of a PNG directory, which is what any other --out is."""


def export_format(out: Path) -> str:
    """ "ffv1" (OUT.mkv), "h264" (OUT.mp4) or "png" (a directory); a media file of any other kind is refused."""
    suffix = out.suffix.lower()
    if suffix in OTHER_MEDIA:
        raise ArchiveError(
            f"{out}: export writes OUT.mkv (FFV1, lossless), OUT.mp4 (H.264, a preview) or a directory of PNG "
            f"frames, not {suffix}"
        )
    return {".mkv": "ffv1", ".mp4": "h264"}.get(suffix, "png")


def camera_span(root: Path, camera: str, site: str | None) -> tuple[int, int] | None:
    """The first and last indexed capture times of a camera (ns), None when it holds no record."""
    with CameraReader(root, resolve_site(root, camera, site), camera) as reader:
        first, last = reader.conn.execute(
            "SELECT MIN(capture_time_ns), MAX(capture_time_ns) FROM records"
        ).fetchone()
    return None if first is None else (int(first), int(last))


def count_frames(root: Path, camera: str, site: str | None, start: TimeBound, end: TimeBound) -> int:
    """How many indexed records fall in the range (what a progress bar can count on)."""
    with CameraReader(root, resolve_site(root, camera, site), camera) as reader:
        lo = to_ns(start)
        hi = to_ns(end)
        (n,) = reader.conn.execute(
            "SELECT COUNT(*) FROM records WHERE capture_time_ns >= ? AND capture_time_ns < ?",
            (-(2**63) if lo is None else lo, 2**63 - 1 if hi is None else hi),
        ).fetchone()
    return int(n)


def estimate_fps(root: Path, camera: str, site: str | None, start: TimeBound, end: TimeBound) -> float:
    """Mean frame rate over the range from capture times; DEFAULT_FPS when it cannot be told."""
    with CameraReader(root, resolve_site(root, camera, site), camera) as reader:
        times = [r.capture_time_ns for r in reader.rows(to_ns(start), to_ns(end))]
    if len(times) < 2 or times[-1] <= times[0]:
        return DEFAULT_FPS
    fps = (len(times) - 1) / ((times[-1] - times[0]) / 1e9)
    return round(min(max(fps, 0.1), 240.0), 3)


def export(
    root: Path,
    camera: str,
    out: Path,
    *,
    site: str | None = None,
    start: TimeBound = None,
    end: TimeBound = None,
    fps: float | None = None,
    on_frame: Callable[[], None] | None = None,
) -> ExportResult:
    """Write the frames of ``camera`` in [start, end) to ``out`` in the format its name asks for."""
    fmt = export_format(out)
    frames = iter_frames(root, camera, site=site, start=start, end=end)
    if fmt == "png":
        out.mkdir(parents=True, exist_ok=True)
        n = _write_pngs(frames, out, on_frame)
        return ExportResult(out, fmt, n, None)
    if shutil.which("ffmpeg") is None:
        raise ArchiveError(
            f"{out}: exporting {out.suffix} needs ffmpeg on PATH; export to a directory for PNG"
        )
    rate = fps if fps is not None else estimate_fps(root, camera, site, start, end)
    n = _pipe_to_ffmpeg(frames, out, rate, on_frame)
    return ExportResult(out, fmt, n, rate)


def _write_pngs(
    frames: Iterator[tuple[RecordHeader, Image]], out: Path, on_frame: Callable[[], None] | None
) -> int:
    """Each frame as ``<seq>.png`` in ``out``, compressed on worker threads while the next frames decode. The
    first failed write stops the export with its path."""
    with PngWriter(on_frame) as writer:
        for header, image in frames:
            writer.write(out / f"{header.seq:08d}.png", image)
    return writer.written


def _pipe_to_ffmpeg(
    frames: Iterator[tuple[RecordHeader, Image]], out: Path, fps: float, on_frame: Callable[[], None] | None
) -> int:
    container, codec = VIDEO_CODECS[out.suffix.lower()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    proc: subprocess.Popen[bytes] | None = None
    shape: tuple[int, ...] | None = None
    n = 0
    with tempfile.TemporaryFile() as errors:
        try:
            for header, image in frames:
                if proc is None:
                    shape = image.shape
                    proc = _start(image, fps, codec, container, tmp, errors)
                elif image.shape != shape:
                    raise ArchiveError(
                        f"{out}: frame seq={header.seq} is {image.shape}, earlier ones {shape}: a video holds "
                        "one size, export this range to PNG or split it"
                    )
                assert proc.stdin is not None
                try:
                    proc.stdin.write(image.tobytes())
                except BrokenPipeError as e:
                    raise ArchiveError(f"{out}: ffmpeg stopped: {_tail(proc, errors)}") from e
                n += 1
                if on_frame is not None:
                    on_frame()
            if proc is None:
                raise ArchiveError(f"{out}: no frames in that range")
            assert proc.stdin is not None
            proc.stdin.close()
            if proc.wait() != 0:
                raise ArchiveError(f"{out}: ffmpeg failed: {_tail(proc, errors)}")
        except BaseException:
            if proc is not None:
                proc.kill()
                proc.wait()
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(out)
    return n


def _start(
    image: Image, fps: float, codec: list[str], container: str, tmp: Path, errors: IO[bytes]
) -> subprocess.Popen[bytes]:
    height, width = image.shape[:2]
    pix_fmt = "gray" if image.ndim == 2 else "bgr24"
    command = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-framerate", f"{fps:g}", "-i", "-",
        *codec, "-f", container, str(tmp),
    ]  # fmt: skip
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)


def _tail(proc: subprocess.Popen[bytes], errors: IO[bytes]) -> str:
    proc.kill()
    proc.wait()
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    return text[-500:] or f"exit status {proc.returncode}"
