"""SSIM agrees with skimage's Gaussian-window SSIM, the reference the thresholds are measured with."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from unittest.mock import patch

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from skimage.metrics import structural_similarity

from agent.capture import ffmpeg
from agent.capture.files import VideoFileSource
from agent.codec import native
from agent.codec.keyselect import KeySelector
from agent.codec.settings import CodecSettings
from agent.codec.ssim import LUMA_TO_GREY, SsimReference, luma_grey_small, ssim, to_grey_small
from tests.fixtures.data import PETS_CUT, shared_set

Image = npt.NDArray[np.uint8]

VIDEO_PAIRS = ((0, 1), (0, 50), (10, 11))
LTA_PAIRS = (
    (1, 2),  # 08:20 → 14:55 SGT, both by day
    (1, 4),  # day vs night (21:20 SGT)
    (4, 5),  # night, 50 minutes apart
)

FULL_SIZE_BOUND = {1: 0.01, 2: 0.05, 4: 0.12}
"""How far SSIM on a shrunk copy may be from skimage on the full-size grey frames.

Shrinking is not an implementation error but a different scale of the same measure: it removes the finest
detail (noise, JPEG blocks), which raises or lowers SSIM depending on the scene. Measured over 170 pairs of
the four public sets (every 37th neighbour pair, every 53rd pair 50 frames apart, first vs middle and last;
LTA every 3rd neighbour pair and day/night pairs), max |ours - skimage full size|:

=========  =========  =========  =========
set        ds 1       ds 2       ds 4
=========  =========  =========  =========
pets       < 1e-5     0.022      0.030
intel      < 1e-5     0.022      0.045
motorway   < 1e-5     0.039      0.101   (320x240: only 80x60 left at ds 4)
lta        < 1e-5     0.044      0.089
=========  =========  =========  =========

On the same shrunk copy the two implementations agree within 1e-5 at every downscale.
"""


def skimage_ssim(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    return float(
        structural_similarity(  # type: ignore[no-untyped-call]
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
    )


def grey(image: Image) -> Image:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)


@cache
def video_frames(name: str, indices: tuple[int, ...]) -> dict[int, Image]:
    """The wanted frames of one public video, read once per test session."""
    capture = cv2.VideoCapture(str(shared_set(name)))
    frames: dict[int, Image] = {}
    try:
        for index in range(max(indices) + 1):
            ok, frame = capture.read()
            assert ok, f"{name}: could not read frame {index}"
            if index in indices:
                frames[index] = np.asarray(frame, dtype=np.uint8)
    finally:
        capture.release()
    return frames


@cache
def lta_frame(number: int) -> Image:
    path: Path = shared_set("lta") / f"{number:04d}.jpg"
    image = cv2.imread(str(path))
    assert image is not None, f"could not read {path}"
    return np.asarray(image, dtype=np.uint8)


def real_pairs(name: str) -> list[tuple[Image, Image]]:
    if name == "lta":
        return [(lta_frame(i), lta_frame(j)) for i, j in LTA_PAIRS]
    frames = video_frames(name, tuple(sorted({i for pair in VIDEO_PAIRS for i in pair})))
    return [(frames[i], frames[j]) for i, j in VIDEO_PAIRS]


@pytest.mark.parametrize("name", ["pets", "intel", "motorway", "lta"])
def test_agrees_with_skimage_on_real_frames(name: str) -> None:
    for a, b in real_pairs(name):
        expected = skimage_ssim(grey(a), grey(b))
        assert expected < 0.9999, "a pair of identical frames would not test anything"
        for downscale, bound in FULL_SIZE_BOUND.items():
            small_a, small_b = to_grey_small(a, downscale), to_grey_small(b, downscale)
            ours = ssim(small_a, small_b)
            assert ours == pytest.approx(expected, abs=bound), f"{name} downscale {downscale} vs full size"
            # On the same shrunk copy the implementation itself must agree (it is the same formula).
            same_size = skimage_ssim(small_a.astype(np.float64), small_b.astype(np.float64))
            assert ours == pytest.approx(same_size, abs=1e-4), f"{name} downscale {downscale} vs same size"


@pytest.mark.parametrize("downscale", [1, 2, 4])
def test_reference_scores_like_the_pure_function(downscale: int) -> None:
    a, b = lta_frame(1), lta_frame(4)
    reference = SsimReference(a, downscale)
    expected = ssim(to_grey_small(a, downscale), to_grey_small(b, downscale))
    assert reference.score(b) == pytest.approx(expected, abs=1e-6)
    # The cached key must not be altered by scoring (in-place arithmetic on the hot path).
    assert reference.score(b) == pytest.approx(expected, abs=1e-6)
    assert reference.score(a) == pytest.approx(1.0, abs=1e-5)


def test_byte_identical_lta_repeat_scores_one() -> None:
    """The LTA feed re-serves a stalled picture (0040 is 0039); the selector must see SSIM 1."""
    assert SsimReference(lta_frame(39), 4).score(lta_frame(40)) == pytest.approx(1.0, abs=1e-6)


def test_ssim_is_symmetric_and_bounded() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    b = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    ga, gb = to_grey_small(a, 1), to_grey_small(b, 1)
    assert ssim(ga, gb) == pytest.approx(ssim(gb, ga), abs=1e-6)
    assert -1.0 <= ssim(ga, gb) < 0.1
    assert ssim(ga, 255 - ga) < 0.0


@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 3), (48, 64, 1)])
def test_identical_frames_score_one(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    assert SsimReference(image, 1).score(image.copy()) == pytest.approx(1.0, abs=1e-6)
    flat = np.full(shape, 77, dtype=np.uint8)
    assert SsimReference(flat, 2).score(flat) == pytest.approx(1.0, abs=1e-6)


def test_grey_small_shrinks_by_area_and_crops_the_remainder() -> None:
    image = np.zeros((50, 61, 3), dtype=np.uint8)
    image[:, :, :] = np.arange(61, dtype=np.uint8)[None, :, None]
    small = to_grey_small(image, 4)
    assert small.dtype == np.float32
    assert small.shape == (12, 15)
    # Columns 0..3 average to 1.5 (OpenCV's fallback rounds it to 2); the last column (60) is beyond 15 * 4
    # and cropped.
    assert small[0, 0] == pytest.approx(1.5, abs=0.5)
    assert small[0, -1] == pytest.approx(57.5, abs=0.5)
    assert to_grey_small(image[:, :, 0], 3).shape == (16, 20)


@pytest.mark.parametrize("downscale", [2, 3, 4, 16])
def test_grey_small_is_the_exact_block_mean_of_grey(downscale: int) -> None:
    """The compiled shrink gives the exact mean of each block's BT.601 grey; OpenCV's rounding path (the
    fallback without the compiled module) stays within 1.5 grey levels of it."""
    image = np.random.default_rng(downscale).integers(0, 256, (203, 181, 3), dtype=np.uint8)
    h, w = 203 // downscale, 181 // downscale
    f = image[: h * downscale, : w * downscale].astype(np.float64)
    exact = (0.114 * f[..., 0] + 0.587 * f[..., 1] + 0.299 * f[..., 2]).reshape(h, downscale, w, downscale)
    small = to_grey_small(image, downscale)
    assert small.dtype == np.float32
    np.testing.assert_allclose(small, exact.mean(axis=(1, 3)), atol=1e-3)
    grey_only = to_grey_small(image[:, :, 1], downscale)
    np.testing.assert_allclose(
        grey_only, f[..., 1].reshape(h, downscale, w, downscale).mean(axis=(1, 3)), atol=1e-3
    )
    with patch.object(native, "AVAILABLE", False):
        fallback = to_grey_small(image, downscale)
    assert np.abs(fallback - small).max() <= 1.5


def test_grey_small_matches_opencv_grey_at_full_size() -> None:
    image = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_grey_small(image, 1), grey(image).astype(np.float32))


def test_mismatched_shapes_are_refused() -> None:
    a = np.zeros((64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(a, np.zeros((64, 65), dtype=np.float32))
    with pytest.raises(ValueError, match="equal shapes"):
        SsimReference(np.zeros((64, 64), dtype=np.uint8), 1).score(np.zeros((32, 64), dtype=np.uint8))


@pytest.mark.parametrize(
    ("image", "downscale", "match"),
    [
        (np.zeros((64, 64), dtype=np.uint16), 1, "uint8"),
        (np.zeros((64, 64, 4), dtype=np.uint8), 1, "BGR"),
        (np.zeros((64,), dtype=np.uint8), 1, "BGR"),
        (np.zeros((40, 40), dtype=np.uint8), 4, "smaller than"),
        (np.zeros((40, 40), dtype=np.uint8), 0, "downscale"),
    ],
)
def test_unusable_images_are_refused(image: npt.NDArray[np.generic], downscale: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_grey_small(image, downscale)  # type: ignore[arg-type]


def test_the_compiled_shrink_refuses_what_does_not_fit() -> None:
    shrink = native._module().grey_shrink
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    for args in ((image.data, 40, 41, 3, 4), (image.data, 40, 40, 2, 4), (image.data, 40, 40, 3, 17)):
        with pytest.raises(ValueError, match="do not match"):
            shrink(*args)


@pytest.mark.skipif(not native.AVAILABLE, reason="the compiled module is not built")
@pytest.mark.parametrize("downscale", [1, 2, 4])
def test_the_compiled_formula_scores_as_numpy_does(downscale: int) -> None:
    """``native.ssim_key`` and ``native.ssim_score`` (the blurs and the formula over the averaged region only)
    against OpenCV's blurs and the numpy formula, on frames of the committed PETS clip far apart, near and
    identical; and they refuse buffers, kernels and shapes that do not fit."""
    capture = cv2.VideoCapture(str(PETS_CUT))
    frames = []
    try:
        while len(frames) < 40 and (read := capture.read())[0]:
            frames.append(np.asarray(read[1], dtype=np.uint8))
    finally:
        capture.release()
    assert len(frames) == 40, "the committed clip has fewer frames than the test reads"
    for a, b in ((frames[0], frames[39]), (frames[10], frames[11]), (frames[5], frames[5])):
        grey_a, grey_b = to_grey_small(a, downscale), to_grey_small(b, downscale)
        reference = SsimReference.from_grey(grey_a, downscale)
        compiled = reference.score_grey(grey_b)
        with patch.object(native, "AVAILABLE", False):  # the same grey copies, scored by numpy
            expected = SsimReference.from_grey(grey_a, downscale).score_grey(grey_b)
        assert compiled == pytest.approx(expected, abs=1e-6)
        assert reference.score(b) == compiled
    assert reference.score(frames[5]) == pytest.approx(1.0, abs=1e-6)
    module = native._module()
    grey = np.zeros((30, 40), dtype=np.float32)
    kernel = np.ones(11, dtype=np.float32) / 11
    maps = native.ssim_key(grey, kernel)
    assert maps.shape == (3, 20, 30)
    for args in (
        (grey.data, kernel.data, 30, 41),  # the buffer is not that shape
        (grey.data, kernel[:10].copy().data, 30, 40),  # an even window
        (grey.data, np.ones(31, dtype=np.float32).data, 30, 40),  # a window larger than the image
        (grey.data, kernel.data[:-1].cast("B"), 30, 40),  # not whole float32 taps
    ):
        with pytest.raises(ValueError, match="do not match"):
            module.ssim_key(*args)
    for args in (
        (grey.data, grey.data, maps[:2].copy().data, kernel.data, 30, 40, 1.0, 1.0),  # two maps of three
        (grey.data, grey[:29].copy().data, maps.data, kernel.data, 30, 40, 1.0, 1.0),  # b not a's size
        (grey.data, grey.data, maps.data, kernel[:9].copy().data, 30, 40, 1.0, 1.0),  # maps of another window
    ):
        with pytest.raises(ValueError, match="do not match"):
            module.ssim_score(*args)


@pytest.mark.skipif(not native.AVAILABLE, reason="the compiled module is not built")
@pytest.mark.parametrize("downscale", [2, 3, 4])
def test_the_compiled_luma_shrink_is_the_numpy_one_to_the_bit(downscale: int) -> None:
    """The picture's Y shrunk and mapped to grey in one compiled pass gives the very floats numpy gives from the
    compiled shrink (the fallback's OpenCV shrink rounds differently, see ``to_grey_small``)."""
    luma = np.random.default_rng(downscale).integers(0, 256, (97, 131), dtype=np.uint8)
    compiled = luma_grey_small(luma, downscale)
    expected = (to_grey_small(luma, downscale) - np.float32(16.0)) * np.float32(LUMA_TO_GREY)
    assert compiled.dtype == expected.dtype == np.float32
    assert compiled.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="smaller than"):
        luma_grey_small(luma[:40], 4)


@pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")
@pytest.mark.parametrize("name", ["clip", "pets", "intel", "motorway"])
def test_ssim_from_the_pictures_y_agrees_with_ssim_from_the_frame(name: str) -> None:
    """The key selector takes its grey copy from a picture's Y plane where the frame came with one: on real
    video decoded by the ffmpeg child, SSIM of those copies and of the frames' grey agree within 0.003 (measured
    at most 0.0015) at every downscale, and the selector's decisions report the same SSIM either way."""
    path = PETS_CUT if name == "clip" else shared_set(name)
    frames: list[tuple[Image, bytes]] = []
    with VideoFileSource(path, decoder="ffmpeg") as source:
        while len(frames) < 60 and (frame := source.read()) is not None:
            assert frame.picture is not None
            frames.append((frame.image, frame.picture))
    assert len(frames) == 60
    height, width = frames[0][0].shape[:2]

    def luma(picture: bytes) -> Image:
        return np.frombuffer(picture, dtype=np.uint8, count=width * height).reshape(height, width)

    for downscale in (1, 2, 4):
        for i, j in ((0, 1), (0, 59), (10, 40), (30, 31)):
            (a, picture_a), (b, picture_b) = frames[i], frames[j]
            of_frames = SsimReference(a, downscale).score(b)
            grey_a = luma_grey_small(luma(picture_a), downscale)
            of_luma = SsimReference.from_grey(grey_a, downscale).score_grey(
                luma_grey_small(luma(picture_b), downscale)
            )
            assert of_luma == pytest.approx(of_frames, abs=0.003), (downscale, i, j)
    with_pictures, without = KeySelector(CodecSettings()), KeySelector(CodecSettings())
    for t, (image, picture) in enumerate(frames):
        decided = with_pictures.decide(image, t, picture=picture)
        expected = without.decide(image, t)
        assert decided.is_key == expected.is_key, t
        assert decided.ssim == pytest.approx(expected.ssim, abs=0.003), t
        assert decided.ssim != expected.ssim or decided.is_key, "the picture was not used"
