"""The seed article's method, re-implemented as it was written, to measure what this project improves on.

The article (``/work/shared/seed/article.md``, a public Qiita post) keys frames by full-resolution grey SSIM
(``compare_ssim``, now ``skimage.metrics.structural_similarity``) against the current key at threshold 0.5,
stores each member as ``cv2.subtract(member, key)`` and writes keys and differences as PackBits TIFFs with
Pillow. ``cv2.subtract`` saturates at 0, so every pixel that got darker than the key is lost: the
reconstruction ``cv2.add(key, difference)`` is not the captured frame. "Seed made exact" keeps everything else
and stores the mod-256 difference instead, which ``np.add`` undoes exactly.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image as PilImage
from skimage.metrics import structural_similarity

Image = npt.NDArray[np.uint8]

SEED_THRESHOLD = 0.5
"""The article's best threshold (its table: 50 % similarity gave the best compression rate)."""


@dataclass
class MethodResult:
    """What one method did to one sequence of frames."""

    method: str
    frames: int
    raw_bytes: int
    encoded_bytes: int | None
    encode_s: float | None
    max_abs_error: int | None
    keys: int | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.raw_bytes / self.encoded_bytes if self.encoded_bytes else None

    @property
    def ms_per_frame(self) -> float | None:
        return 1000.0 * self.encode_s / self.frames if self.encode_s is not None and self.frames else None


def grey(image: Image) -> Image:
    return image if image.ndim == 2 else np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)


def seed_ssim(a: Image, b: Image) -> float:
    """Full-resolution grey SSIM with the library defaults the article used (7x7 window, data range 255)."""
    return float(structural_similarity(grey(a), grey(b), data_range=255))  # type: ignore[no-untyped-call]


def packbits_tiff(image: Image) -> bytes:
    """The article's ``save(fileout, compression='packbits')``, into memory: the TIFF's bytes."""
    pil = PilImage.fromarray(image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1]))
    out = io.BytesIO()
    pil.save(out, format="TIFF", compression="packbits")
    return out.getvalue()


def unpack_tiff(data: bytes) -> Image:
    with PilImage.open(io.BytesIO(data)) as pil:
        array = np.asarray(pil, dtype=np.uint8)
    return array if array.ndim == 2 else np.ascontiguousarray(array[:, :, ::-1])


def seed_difference(member: Image, key: Image) -> Image:
    """The article's ``cv2.subtract(member, key)``: negative differences become 0 (lossy)."""
    return np.asarray(cv2.subtract(member, key), dtype=np.uint8)


def seed_reconstruct(key: Image, difference: Image) -> Image:
    """What a reader of the seed's archive gets back: ``cv2.add(key, difference)``."""
    return np.asarray(cv2.add(key, difference), dtype=np.uint8)


def exact_difference(member: Image, key: Image) -> Image:
    """Mod-256 difference (``np.subtract`` on uint8 wraps): nothing is lost."""
    return np.subtract(member, key)


def exact_reconstruct(key: Image, difference: Image) -> Image:
    return np.add(key, difference)


def run_seed(frames: Sequence[Image], threshold: float = SEED_THRESHOLD, exact: bool = False) -> MethodResult:
    """Encode ``frames`` the seed's way and decode the stored TIFFs again to measure the error.

    Timed: SSIM, subtraction and TIFF writing (what the seed's pipeline does per frame). Not timed: the
    decoding done here to check the reconstruction.
    """
    subtract, reconstruct = (
        (exact_difference, exact_reconstruct) if exact else (seed_difference, seed_reconstruct)
    )
    encoded = 0
    encode_s = 0.0
    max_err = 0
    keys = 0
    key: Image | None = None
    stored_key: Image | None = None
    for image in frames:
        start = time.perf_counter()
        is_key = key is None or seed_ssim(key, image) < threshold
        if is_key:
            key = image
            blob = packbits_tiff(image)
        else:
            assert key is not None
            blob = packbits_tiff(subtract(image, key))
        encode_s += time.perf_counter() - start
        encoded += len(blob)
        decoded = unpack_tiff(blob)
        if is_key:
            keys += 1
            stored_key = decoded
            rebuilt = decoded
        else:
            assert stored_key is not None
            rebuilt = reconstruct(stored_key, decoded)
        max_err = max(max_err, int(np.max(np.abs(rebuilt.astype(np.int16) - image.astype(np.int16)))))
    return MethodResult(
        method="seed made exact (mod-256)" if exact else "seed (cv2.subtract)",
        frames=len(frames),
        raw_bytes=sum(f.nbytes for f in frames),
        encoded_bytes=encoded,
        encode_s=encode_s,
        max_abs_error=max_err,
        keys=keys,
        note=f"SSIM full-res grey, threshold {threshold}",
    )
