"""What every capture source hands out, and the interface it implements.

A source owns its device or file; it is used from one thread (the agent's main loop) unless the
module says otherwise. ``read()`` returns the newest frame or ``None`` when the source is exhausted.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""A frame's pixels: ``(H, W, 3)`` BGR or ``(H, W)`` grey, C-contiguous ``uint8``."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured picture with the clocks read when it was taken."""

    image: Image
    wall_time_ns: int
    """UTC wall clock, ns since the Unix epoch."""
    monotonic_ns: int
    """``time.monotonic_ns()`` on the capturing host: for intervals, never for dates."""
    clock_synced: bool = True
    """Whether the wall clock was known to be synchronised (NTP) when the frame was taken."""
    source_index: int = field(default=-1)
    """Position of the frame in its source (frame number of a file, -1 when unknown)."""
    picture: bytes | None = field(default=None, repr=False)
    """The packed yuv420p picture ``image`` was converted from by ``agent.codec.yuv.to_bgr``, where the source has
    one (video decoded by the ffmpeg child): the codec codes it instead of the frame (stage YUV420)."""

    @classmethod
    def now(
        cls, image: Image, *, clock_synced: bool = True, source_index: int = -1, picture: bytes | None = None
    ) -> Frame:
        """Stamp ``image`` with the current clocks."""
        return cls(image, time.time_ns(), time.monotonic_ns(), clock_synced, source_index, picture)


class CaptureSource(abc.ABC):
    """A camera, stream, file or folder that yields frames."""

    name: str = "source"

    @abc.abstractmethod
    def open(self) -> None:
        """Open the device or file; raise ``CaptureError`` with the reason when that fails."""

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """Return the next (for live sources: the newest) frame, or ``None`` at end of input."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice."""

    def interrupt(self) -> None:  # noqa: B027 (a hook: most sources need nothing here)
        """Make a ``read()`` blocked in another thread return ``None`` soon; callable from any thread.

        The default does nothing: a file's or a folder's read does not wait for anything. Sources whose read waits
        for a camera override it; the owner still calls ``close()`` from its own thread afterwards.
        """

    def __enter__(self) -> CaptureSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
