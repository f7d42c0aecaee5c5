"""Replay of recorded footage: a video file or a folder of stills, as if it were a camera.

Replay is how the agent is tried on real footage without a camera, and how the benchmarks and tests feed
the codec. Frames come out as fast as they are asked for; pacing is the caller's business (``fps`` says
what the file claims). Each source is used from one thread, like every ``CaptureSource``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from agent.capture import ffmpeg
from agent.capture.base import CaptureSource, Frame, Image
from agent.capture.latest import Capture
from agent.errors import CaptureError

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 30.0
"""Longest ffprobe may take over a file (it reads a few frames; slow disks and long GOPs take longer)."""

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def normalise(image: np.ndarray, where: str) -> Image:
    """Bring a decoded picture to the one shape the codec takes: uint8 BGR ``(H, W, 3)`` or grey ``(H, W)``.

    Alpha is dropped (a camera has none, and keeping it would cost a fourth plane for nothing). Deeper
    pixels are refused rather than shifted down: silently losing 8 bits would break the promise that
    what is archived is what was captured.
    """
    if image.dtype != np.uint8:
        raise CaptureError(
            f"{where}: {image.dtype} pixels are not supported (only 8-bit images are; "
            "convert 16-bit or float images to 8-bit first)"
        )
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise CaptureError(f"{where}: unsupported image shape {image.shape}")
    return np.ascontiguousarray(image)


class VideoFileSource(CaptureSource):
    """Frames of a video file in order; with ``loop`` it starts over at the end, for soak tests.

    ``decoder`` picks who decodes it (``agent.capture.ffmpeg`` says why it matters): ``"auto"`` an ``ffmpeg``
    child where ffmpeg is installed and the file's pictures are limited-range yuv420p, else OpenCV;
    ``"ffmpeg"`` the child or a ``CaptureError`` saying why not; ``"opencv"`` OpenCV's ``VideoCapture``.
    """

    def __init__(self, path: Path | str, loop: bool = False, decoder: str = "auto") -> None:
        ffmpeg.check_decoder(decoder, f"video {path}")
        self.path = Path(path)
        self.loop = loop
        self.decoder = decoder
        self.name = f"file:{self.path}"
        self._capture: Capture | None = None
        self._pending: tuple[Image, bytes | None] | None = None
        self._index = 0
        self._fps = 0.0
        self.decoded_by = ""
        """``"ffmpeg"`` or ``"opencv"`` once open: who decodes the file."""

    @property
    def fps(self) -> float:
        """Frame rate the container claims (0.0 when it does not say or the file is not open)."""
        return self._fps if self._capture is not None else 0.0

    def open(self) -> None:
        """Open the file and decode its first frame, so that a file without a frame fails here."""
        if self._capture is not None:
            return
        self._capture, self._pending = self._start()
        self._index = 0

    def _start(self) -> tuple[Capture, tuple[Image, bytes | None]]:
        if not self.path.is_file():
            raise CaptureError(f"video {self.path}: no such file")
        child = self._start_ffmpeg()
        capture: Capture = child if child is not None else self._start_opencv()
        ok, image = capture.read()
        if not ok or image is None:
            said = child.said() if child is not None else ""
            capture.release()
            raise CaptureError(
                f"video {self.path}: opened but yields no frame (empty or corrupt)"
                + (f": {said}" if said else "")
            )
        return capture, _with_picture(capture, image, f"video {self.path} frame 0")

    def _start_ffmpeg(self) -> ffmpeg.FfmpegCapture | None:
        """The ffmpeg child, or ``None`` (with the reason logged) where OpenCV is to decode."""
        what = f"video {self.path}"
        capture = ffmpeg.start(
            str(self.path), [], _PROBE_TIMEOUT_S, what, self.decoder, unreadable_falls_back=True
        )
        if capture is None:
            return None
        self._fps = capture.info.fps
        self.decoded_by = "ffmpeg"
        log.info("%s: %s", what, capture.describe())
        return capture

    def _start_opencv(self) -> Capture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise CaptureError(f"video {self.path}: OpenCV cannot open it (not a video, or no codec for it)")
        self._fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.decoded_by = "opencv"
        opened: Capture = capture
        return opened

    def read(self) -> Frame | None:
        if self._capture is None:
            raise CaptureError(f"video {self.path}: read() before open()")
        if self._pending is not None:
            (image, picture), self._pending = self._pending, None
        else:
            ok, raw = self._capture.read()
            if not ok or raw is None:
                if not self.loop:
                    return None
                log.info("video %s: end after %d frames, starting over", self.path, self._index)
                self._capture.release()
                self._capture, (image, picture) = self._start()
                self._index = 0
            else:
                image, picture = _with_picture(self._capture, raw, f"video {self.path} frame {self._index}")
        frame = Frame.now(image, source_index=self._index, picture=picture)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._pending = None


def _with_picture(capture: Capture, raw: np.ndarray, where: str) -> tuple[Image, bytes | None]:
    """A decoded frame, normalised, and the yuv420p picture it came from when an ffmpeg child decoded it."""
    image = normalise(raw, where)
    return image, ffmpeg.picture_of(capture) if image is raw else None


class ImageFolderSource(CaptureSource):
    """The stills of one folder in name order (time-lapse snapshots, exported frames).

    ``source_index`` is the position in the sorted listing, so a skipped unreadable file leaves a gap.
    """

    def __init__(self, path: Path | str, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        self.name = f"folder:{self.path}"
        self._files: list[Path] | None = None
        self._next = 0
        self._yielded_this_pass = 0

    def open(self) -> None:
        """List the images now, so that an empty or missing folder fails at start, not mid-run."""
        if self._files is not None:
            return
        if not self.path.is_dir():
            raise CaptureError(f"image folder {self.path}: no such directory")
        files = sorted(
            (p for p in self.path.iterdir() if is_image_file(p)),
            key=lambda p: p.name,
        )
        if not files:
            raise CaptureError(
                f"image folder {self.path}: no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        self._files = files
        self._next = 0
        self._yielded_this_pass = 0

    def read(self) -> Frame | None:
        if self._files is None:
            raise CaptureError(f"image folder {self.path}: read() before open()")
        while True:
            if self._next >= len(self._files):
                if self._yielded_this_pass == 0:
                    raise CaptureError(
                        f"image folder {self.path}: none of its {len(self._files)} images is readable"
                    )
                if not self.loop:
                    return None
                self._next = 0
                self._yielded_this_pass = 0
            index = self._next
            self._next += 1
            file = self._files[index]
            raw = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if raw is None:
                log.warning("image folder %s: skipping %s, which OpenCV cannot read", self.path, file.name)
                continue
            self._yielded_this_pass += 1
            return Frame.now(normalise(raw, f"image {file}"), source_index=index)

    def close(self) -> None:
        self._files = None


def is_image_file(path: Path) -> bool:
    """Whether a folder entry is a still this package replays (hidden files, e.g. ``._x.jpg``, are not)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def open_path(path: Path, loop: bool = False, decoder: str = "auto") -> CaptureSource:
    """The replay source for ``path``: a folder of stills or a video file (not yet opened; use ``with``)."""
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    return VideoFileSource(path, loop=loop, decoder=decoder)


def iter_images(path: Path, limit: int | None = None, decoder: str = "auto") -> Iterator[Image]:
    """The pictures of a video or folder, at most ``limit`` of them, for tools that want pixels only."""
    if limit is not None and limit <= 0:
        return
    with open_path(path, decoder=decoder) as source:
        count = 0
        while (frame := source.read()) is not None:
            yield frame.image
            count += 1
            if limit is not None and count >= limit:
                return
