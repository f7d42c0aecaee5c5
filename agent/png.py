"""Frames written as lossless PNG files (``decode``, ``archive export``, ``simulate --out``, the demo).

``cv2.imwrite`` reports every failure as ``False``, never why: a full disk, a missing folder and a read-only
mount all read "could not write". Encoding in memory and writing with Python raises ``OSError`` with its errno
instead, which the CLI prints as "PATH: No space left on device"; and a file cut short by the failure is
removed rather than left looking like a frame.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import CctvError


def write_png(path: Path, image: npt.NDArray[np.uint8]) -> None:
    """Write ``image`` (grey or BGR) to ``path``; raises ``OSError`` if the file cannot be written."""
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise CctvError(f"{path}: OpenCV cannot encode a {image.shape} {image.dtype} image as PNG")
    f = path.open("wb")  # failing here leaves nothing behind
    try:
        with f:
            f.write(png.tobytes())
    except OSError as e:
        path.unlink(missing_ok=True)
        if e.filename is None:  # write() and close() errors name no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def png_writers() -> int:
    """Threads that compress PNGs while the caller decodes: a 1080p frame takes about as long to compress
    (zlib, in OpenCV, without the GIL) as to decode (measured 55 and 45 ms), and decoding is a chain."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class PngWriter:
    """``write_png`` on :func:`png_writers` threads, for a caller that decodes frames one after another.

    At most twice as many frames as threads wait in memory: ``write`` blocks for the oldest beyond that.
    The first failed write is raised from a later ``write`` or from ``close``; leaving the ``with`` block
    by an exception cancels what has not started. ``on_written`` is called (on the caller's thread) as each
    file is complete, for a progress bar.
    """

    def __init__(self, on_written: Callable[[], None] | None = None, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else png_writers()
        self.written = 0
        self._on_written = on_written
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="png")
        self._pending: deque[Future[None]] = deque()

    def write(self, path: Path, image: npt.NDArray[np.uint8]) -> None:
        self._pending.append(self._pool.submit(write_png, path, image))
        while len(self._pending) > 2 * self.workers:
            self._finish_one()

    def close(self) -> int:
        """Wait for every write; the number of files written."""
        while self._pending:
            self._finish_one()
        self._pool.shutdown()
        return self.written

    def _finish_one(self) -> None:
        self._pending.popleft().result()
        self.written += 1
        if self._on_written is not None:
            self._on_written()

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
            return
        for future in self._pending:
            future.cancel()
        self._pool.shutdown()
