"""Which frames become keys: the seed article's SSIM rule plus the limits a lossy link needs.

A key is coded on its own; the frames after it (its group) are coded against it or each other. The seed's
rule makes a frame a key when its SSIM to the current key falls below a threshold. On top of that a group is
bounded in frames and in capture time (what one lost record can take with it), a change of frame format
starts a new group (a residual needs equal shapes), and the caller can ask for a key, e.g. after the spool
evicted records or the link lost data, so that a subscriber can start decoding again.

The selector is pure and used from one thread (the encoder's). SSIM is computed at most once per frame and
only when no other rule already made the frame a key; the key's blurred maps are cached (``SsimReference``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from agent.codec import yuv
from agent.codec.settings import CodecSettings
from agent.codec.ssim import WIN_SIZE, Grey, SsimReference, luma_grey_small, to_grey_small

log = logging.getLogger(__name__)


class KeyReason(StrEnum):
    """Why a frame became a key, in the order the rules are checked after ``FIRST``."""

    FIRST = "first"
    """No key yet (start, or the selector was just created)."""
    REQUESTED = "requested"
    """``force=True`` or a pending ``request_key()``."""
    FORMAT_CHANGE = "format_change"
    """Shape, channel count or dtype differ from the key's: no residual is possible."""
    INTERVAL_FRAMES = "interval_frames"
    """The group already holds ``max_key_interval_frames`` frames, key included."""
    INTERVAL_TIME = "interval_time"
    """The key was captured ``max_key_interval_s`` or longer before this frame."""
    SSIM = "ssim"
    """SSIM to the key fell below ``threshold`` (the seed's rule)."""


@dataclass(frozen=True, slots=True)
class KeyDecision:
    """The verdict on one frame.

    ``ssim`` is the frame's SSIM to the key it is compared with. Members report their SSIM to the current
    key. A key made by the SSIM rule reports its (low) SSIM to the previous key, which is what made it a key;
    every other key reports 1.0, because SSIM is not computed for them (it would cost time and decide
    nothing) and a key is trivially identical to itself.
    """

    is_key: bool
    reason: KeyReason | None
    ssim: float

    def __post_init__(self) -> None:
        if self.is_key != (self.reason is not None):
            raise ValueError(
                f"a key needs a reason and a member none, got is_key={self.is_key}, {self.reason}"
            )


_Format = tuple[tuple[int, ...], np.dtype[np.generic]]


class KeySelector:
    """Decides, frame by frame, whether a frame starts a new group.

    ``decide`` must see every frame the encoder codes, in capture order: the group's frame count and the
    cached key are advanced by it.
    """

    def __init__(self, settings: CodecSettings) -> None:
        self._threshold = settings.threshold
        self._max_frames = settings.max_key_interval_frames
        self._max_age_ns = round(settings.max_key_interval_s * 1e9)
        self._downscale = settings.ssim_downscale
        self._reference: SsimReference | None = None
        self._key_format: _Format | None = None
        self._key_time_ns = 0
        self._group_frames = 0
        self._requested = False

    @property
    def group_frames(self) -> int:
        """Frames in the current group so far, key included (0 before the first frame)."""
        return self._group_frames

    def request_key(self) -> None:
        """Make the next frame a key (reason ``REQUESTED``); any key made first also satisfies it."""
        self._requested = True

    def decide(
        self,
        image: npt.NDArray[np.uint8],
        capture_time_ns: int,
        *,
        force: bool = False,
        picture: bytes | bytearray | memoryview | None = None,
    ) -> KeyDecision:
        """Key or member? Advances the group; a new key becomes the reference for the frames after it.

        Threshold 0 disables the SSIM rule outright (SSIM can be negative, e.g. for an inverted picture).
        Raises ``ValueError`` for an image SSIM cannot use (not uint8, not grey or BGR, under 11x11 pixels).
        ``picture``: the yuv420p picture ``image`` was converted from, if any; its Y plane gives the grey copy.
        """
        image_format: _Format = (image.shape, image.dtype)
        reason = self._rule_reason(image_format, capture_time_ns, force)
        score = 1.0
        grey = None
        if reason is None:
            assert self._reference is not None, "a group without a key reference"
            grey = _grey_of(image, picture, self._reference.downscale)
            score = self._reference.score_grey(grey)
            if self._threshold > 0.0 and score < self._threshold:
                reason = KeyReason.SSIM
        if reason is None:
            self._group_frames += 1
            return KeyDecision(is_key=False, reason=None, ssim=score)
        self._rebase(image, picture, image_format, capture_time_ns, grey)
        log.debug("key frame (%s), SSIM to previous key %.3f", reason, score)
        return KeyDecision(is_key=True, reason=reason, ssim=score)

    def _rule_reason(self, image_format: _Format, capture_time_ns: int, force: bool) -> KeyReason | None:
        """The reason a frame is a key before any SSIM is computed, or None."""
        if self._reference is None:
            return KeyReason.FIRST
        if force or self._requested:
            return KeyReason.REQUESTED
        if image_format != self._key_format:
            return KeyReason.FORMAT_CHANGE
        if self._group_frames >= self._max_frames:
            return KeyReason.INTERVAL_FRAMES
        if self._max_age_ns > 0 and capture_time_ns - self._key_time_ns >= self._max_age_ns:
            return KeyReason.INTERVAL_TIME
        return None

    def _rebase(
        self,
        image: npt.NDArray[np.uint8],
        picture: bytes | bytearray | memoryview | None,
        image_format: _Format,
        capture_time_ns: int,
        grey: npt.NDArray[np.float32] | None,
    ) -> None:
        if grey is None:
            downscale = _usable_downscale(image.shape, self._downscale)
            self._reference = SsimReference.from_grey(_grey_of(image, picture, downscale), downscale)
        else:
            assert self._reference is not None
            self._reference = SsimReference.from_grey(grey, self._reference.downscale)
        self._key_format = image_format
        self._key_time_ns = capture_time_ns
        self._group_frames = 1
        self._requested = False


def _grey_of(
    image: npt.NDArray[np.uint8], picture: bytes | bytearray | memoryview | None, downscale: int
) -> Grey:
    """The frame's shrunk grey copy, from its picture's Y plane where it came with one (a third of the bytes to
    read; the two greys differ by the conversion's rounding, a key's and a member's SSIM by far less than 0.01)."""
    height, width = image.shape[:2]
    if (
        picture is not None
        and image.dtype == np.uint8
        and image.ndim == 3
        and len(picture) == yuv.picture_bytes(width, height)
    ):
        luma = np.frombuffer(picture, dtype=np.uint8, count=width * height).reshape(height, width)
        return luma_grey_small(luma, downscale)
    return to_grey_small(image, downscale)


def _usable_downscale(shape: tuple[int, ...], downscale: int) -> int:
    """The configured downscale, lowered for small frames so that the SSIM window still fits."""
    smallest_side = min(shape[:2]) if len(shape) >= 2 else 0
    return max(1, min(downscale, smallest_side // WIN_SIZE))
