"""Frames written as lossless PNG files (``decode``, ``archive export``, ``simulate --out``).

``cv2.imwrite`` reports every failure as ``False``, never why: a full disk, a missing folder and a read-only
mount all read "could not write". Encoding in memory and writing with Python raises ``OSError`` with its errno
instead, which the CLI prints as "PATH: No space left on device"; and a file cut short by the failure is
removed rather than left looking like a frame.
"""

from __future__ import annotations

from pathlib import Path

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
