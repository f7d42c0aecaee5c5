"""Structural similarity (SSIM) as the key selector needs it: fast, on grey, optionally on a shrunk copy.

The number must agree with the reference everyone knows, ``skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)`` (Wang et al. 2004), so that
thresholds measured with skimage carry over. It is computed here with OpenCV on float32 because that is
several times faster than skimage's float64 scipy filters, and it runs once per captured frame on a Pi.

Agreement with skimage: the Gaussian window is the same (σ = 1.5, truncated at 3.5σ → 11 taps), and the mean
is taken over the same region — skimage drops ``(11 - 1) // 2 = 5`` pixels at every border, which are exactly
the pixels whose window reaches past the edge, so the border mode of the blur never matters.

``SsimReference`` holds one side (the current key) prepared once: its shrunk grey copy and, over the region
the mean is taken on, its local mean, squared mean and variance. Each new frame then costs one shrink + grey
conversion and three blurs (μ_b, E[b²], E[ab]) with the formula; the compiled module does the blurs and the
formula in one call over that region only (``native.ssim_score``: 19.5 against 46 us for OpenCV's three blurs
and the one-pass formula on a 320x240 frame's 80x60 copy, 0.53 against 0.77 ms on a 1080p frame's), numpy and
OpenCV otherwise.
"""

from __future__ import annotations

from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from agent.codec import native

Grey = npt.NDArray[np.float32]
"""A prepared image: 2-D float32 grey (values 0..255), possibly shrunk."""

SIGMA: Final = 1.5
WIN_SIZE: Final = 11
"""``2 * int(3.5 * σ + 0.5) + 1``: skimage's window for σ = 1.5 (scipy truncates the Gaussian at 3.5σ)."""
_PAD: Final = (WIN_SIZE - 1) // 2
_KERNEL: Final[Grey] = np.ascontiguousarray(
    cv2.getGaussianKernel(WIN_SIZE, SIGMA, ktype=cv2.CV_32F).ravel(), dtype=np.float32
)
"""The window's taps as OpenCV's blur uses them (computed in double, rounded to float32)."""
_C1: Final = (0.01 * 255) ** 2
_C2: Final = (0.03 * 255) ** 2


def to_grey_small(image: npt.NDArray[np.uint8], downscale: int) -> Grey:
    """Grey float32 copy of ``image`` shrunk by the integer ``downscale`` (area averaging).

    The image is first cropped to a multiple of ``downscale`` (at most ``downscale - 1`` pixels on the right
    and bottom edge) so that every output pixel averages a whole block. With the compiled module each output
    pixel is the exact mean of its block's grey (``native.grey_shrink``: one pass over the frame, 0.17 ms
    against 0.31 ms at 768 x 432 for OpenCV). Without it, even factors are taken as repeated halvings, the
    one area shrink OpenCV vectorises, and colour is shrunk before the grey conversion (both are linear and
    commute up to rounding); that result differs from the exact mean by the rounding to a byte at each step
    (at most 1.5 grey levels, measured), which moves SSIM by well under the 0.01 its tests allow.
    """
    image = _checked(image, downscale)
    height, width = image.shape[0] // downscale, image.shape[1] // downscale
    if downscale > 1 and native.AVAILABLE:
        return native.grey_shrink(image, downscale)
    small: npt.NDArray[Any] = image[: height * downscale, : width * downscale]
    factor = downscale
    while factor % 2 == 0:
        # OpenCV's area shrink is vectorised for a factor of 2 only (4x faster than a factor of 4 on BGR).
        small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_AREA)
        factor //= 2
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    if factor > 1:
        small = cv2.resize(small, (width, height), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32)


def _checked(image: npt.NDArray[np.uint8], downscale: int) -> npt.NDArray[np.uint8]:
    """``image`` as a grey (H, W) or BGR (H, W, 3) uint8 array that ``downscale`` leaves as large as the window;
    ``ValueError`` if it is not one."""
    if downscale < 1:
        raise ValueError(f"downscale must be ≥ 1, got {downscale}")
    if image.dtype != np.uint8:
        raise ValueError(f"SSIM needs a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"SSIM needs an (H, W, 3) BGR or (H, W) grey image, got shape {image.shape}")
    if image.shape[0] // downscale < WIN_SIZE or image.shape[1] // downscale < WIN_SIZE:
        raise ValueError(
            f"image {image.shape[1]}x{image.shape[0]} shrunk by {downscale} is smaller than the "
            f"{WIN_SIZE}x{WIN_SIZE} SSIM window"
        )
    return image


LUMA_TO_GREY: Final = 255 / 219
"""Grey from a picture's Y: BT.601's limited-range luma is 16 + 219/255 of the grey 0.299 R + 0.587 G + 0.114 B
(whose chroma terms cancel out), so a frame's grey is 255/219 (Y − 16) up to the rounding and clamping of its
conversion, and SSIM of the two agrees to well under its tests' 0.01 (``tests/unit/test_ssim.py``)."""


def luma_grey_small(luma: npt.NDArray[np.uint8], downscale: int) -> Grey:
    """:func:`to_grey_small` of the frame a (H, W) Y plane was converted to, from the Y plane: a third of the bytes
    to read (a 320x240 frame's shrink took 40 us, read from memory, against 14). Compiled, the shrink and the map
    to grey are one pass (7 against 17 us on a 320x240 picture in cache)."""
    if downscale > 1 and native.AVAILABLE:
        return native.grey_shrink(_checked(luma, downscale), downscale, 16.0, LUMA_TO_GREY)
    small = to_grey_small(luma, downscale)
    return np.asarray((small - np.float32(16.0)) * np.float32(LUMA_TO_GREY), dtype=np.float32)


def _blur(image: Grey) -> Grey:
    # The border mode never reaches the averaged region (see the module note); REFLECT is scipy's default.
    blurred: npt.NDArray[Any] = cv2.GaussianBlur(
        image, (WIN_SIZE, WIN_SIZE), SIGMA, borderType=cv2.BORDER_REFLECT
    )
    return blurred


def _valid(image: Grey) -> Grey:
    """The region skimage averages over: every pixel whose window lies inside the image."""
    return image[_PAD:-_PAD, _PAD:-_PAD]


class SsimReference:
    """One image prepared for many comparisons: the current key, against which every frame is scored.

    Holds the shrunk grey copy (for the product a·b) and, over the region the mean is taken on, its local mean
    μ_a, μ_a² and its local variance σ_a² (one (3, h, w) array), so that a comparison blurs only the new frame's
    three maps.
    """

    __slots__ = ("_grey", "_maps", "downscale")

    def __init__(self, image: npt.NDArray[np.uint8], downscale: int) -> None:
        self.downscale = downscale
        self._prepare(to_grey_small(image, downscale))

    @classmethod
    def from_grey(cls, grey: Grey, downscale: int = 1) -> SsimReference:
        """Reference from an already prepared image; ``downscale`` is what ``score`` applies to new frames."""
        ref = cls.__new__(cls)
        ref.downscale = downscale
        ref._prepare(_check_grey(grey, "reference"))
        return ref

    def _prepare(self, grey: Grey) -> None:
        self._grey = np.ascontiguousarray(grey)
        if native.AVAILABLE:
            self._maps = native.ssim_key(self._grey, _KERNEL)
            return
        mu = _valid(_blur(grey))
        mu_sq = mu * mu
        self._maps = np.stack((mu, mu_sq, _valid(_blur(grey * grey)) - mu_sq))

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the prepared (grey, shrunk) reference."""
        height, width = self._grey.shape
        return height, width

    def score(self, image: npt.NDArray[np.uint8]) -> float:
        """SSIM of ``image`` (prepared with this reference's downscale) to the reference."""
        return self.score_grey(to_grey_small(image, self.downscale))

    def score_grey(self, grey: Grey) -> float:
        """SSIM of an already prepared image to the reference."""
        other = _check_grey(grey, "image")
        if other.shape != self._grey.shape:
            raise ValueError(f"SSIM needs equal shapes, got {self._grey.shape} and {other.shape}")
        if native.AVAILABLE:  # the blurs and the formula in one compiled pass instead of three and fifteen
            return native.ssim_score(self._grey, self._maps, other, _KERNEL, _C1, _C2)
        # Same formula as skimage, in place to spare allocations.
        mu_a, mu_a_sq, sigma_a_sq = self._maps
        mu_b = np.ascontiguousarray(_valid(_blur(other)))
        e_bb = np.ascontiguousarray(_valid(_blur(other * other)))
        e_ab = np.ascontiguousarray(_valid(_blur(self._grey * other)))
        mu_b_sq = mu_b * mu_b
        mu_ab = mu_b
        mu_ab *= mu_a
        sigma_ab = e_ab
        sigma_ab -= mu_ab
        sigma_ab *= 2.0
        sigma_ab += _C2
        numerator = mu_ab
        numerator *= 2.0
        numerator += _C1
        numerator *= sigma_ab
        sigma_sum = e_bb
        sigma_sum -= mu_b_sq
        sigma_sum += sigma_a_sq
        sigma_sum += _C2
        denominator = mu_b_sq
        denominator += mu_a_sq
        denominator += _C1
        denominator *= sigma_sum
        numerator /= denominator
        return float(cv2.mean(numerator)[0])


def ssim(a: Grey, b: Grey) -> float:
    """SSIM of two prepared images of equal shape (see ``to_grey_small``); symmetric in ``a`` and ``b``."""
    grey_a, grey_b = _check_grey(a, "a"), _check_grey(b, "b")
    if grey_a.shape != grey_b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {grey_a.shape} and {grey_b.shape}")
    return SsimReference.from_grey(grey_a).score_grey(grey_b)


def _check_grey(grey: npt.NDArray[np.generic], name: str) -> Grey:
    if grey.ndim != 2:
        raise ValueError(f"SSIM {name} must be a 2-D grey image, got shape {grey.shape}")
    if grey.shape[0] < WIN_SIZE or grey.shape[1] < WIN_SIZE:
        raise ValueError(f"SSIM {name} {grey.shape} is smaller than the {WIN_SIZE}x{WIN_SIZE} window")
    return np.asarray(grey, dtype=np.float32)
