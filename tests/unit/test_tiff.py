"""Our PackBits rows, wrapped as a TIFF, open in Pillow (its own decoder and libtiff's) to the same pixels."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from agent.codec.packbits import encode_rows
from agent.codec.tiff import wrap_tiff


def as_tiff(pixels: np.ndarray) -> bytes:
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return wrap_tiff(encode_rows(pixels, width * channels), width, height, channels)


def opened(tiff: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(tiff)) as image:
        assert image.format == "TIFF"
        assert image.info["compression"] == "packbits"
        return np.asarray(image)


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    sparse = np.zeros((64, 300, 3), dtype=np.uint8)
    sparse[rng.random(sparse.shape) < 0.05] = 255
    return [
        rng.integers(0, 256, (31, 17, 3), dtype=np.uint8),
        rng.integers(0, 3, (40, 200), dtype=np.uint8),
        np.zeros((1, 1), dtype=np.uint8),
        np.zeros((1, 1, 3), dtype=np.uint8),
        np.full((3, 500), 9, dtype=np.uint8),
        np.arange(97 * 5, dtype=np.uint8).reshape(97, 5),
        sparse,
    ]


@pytest.mark.parametrize("pixels", frames(), ids=lambda p: "x".join(map(str, p.shape)))
@pytest.mark.parametrize("libtiff", [False, True], ids=["pillow-decoder", "libtiff-decoder"])
def test_pillow_opens_our_strip(pixels: np.ndarray, libtiff: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TiffImagePlugin, "READ_LIBTIFF", libtiff)
    np.testing.assert_array_equal(opened(as_tiff(pixels)), pixels)


def test_tags_say_what_the_docstring_promises() -> None:
    pixels = np.zeros((6, 4, 3), dtype=np.uint8)
    packed = encode_rows(pixels, 12)
    tiff = wrap_tiff(packed, 4, 6, 3)
    assert tiff[:4] == b"II*\x00"
    with Image.open(io.BytesIO(tiff)) as image:
        tags = image.tag_v2
        assert tags[259] == 32773  # PackBits
        assert tags[262] == 2  # RGB
        assert tags[258] == (8, 8, 8)
        assert tags[278] == 6  # one strip
        assert tags[279] == (len(packed),)
        assert tags[284] == 1
        (strip_at,) = tags[273]
    assert tiff[strip_at:] == packed
    with Image.open(io.BytesIO(wrap_tiff(encode_rows(pixels[..., 0], 4), 4, 6, 1))) as grey:
        assert grey.tag_v2[262] == 1  # BlackIsZero
        assert grey.mode == "L"


def test_bgr_is_wrapped_in_stored_order() -> None:
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[..., 0] = 200  # blue, in OpenCV's order
    shown = opened(as_tiff(bgr))
    assert shown[..., 0].tolist() == [[200, 200], [200, 200]]  # viewers call it red
    assert not shown[..., 2].any()


@pytest.mark.parametrize(("width", "height", "channels"), [(4, 4, 2), (4, 4, 4), (0, 4, 1), (4, 0, 3)])
def test_refuses_what_it_cannot_describe(width: int, height: int, channels: int) -> None:
    with pytest.raises(ValueError, match=r"channels|size"):
        wrap_tiff(b"", width, height, channels)


def test_real_residual_opens_in_pillow(pets_cut: Path) -> None:
    capture = cv2.VideoCapture(str(pets_cut))
    try:
        frames_read = [capture.read() for _ in range(2)]
    finally:
        capture.release()
    assert all(ok for ok, _ in frames_read)
    (_, a), (_, b) = frames_read
    residual = np.subtract(b, a)
    np.testing.assert_array_equal(opened(as_tiff(residual)), residual)
