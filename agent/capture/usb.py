"""USB (UVC) cameras and CSI cameras exposed as V4L2 devices.

The driver queues several buffers; read lazily, they would hand out frames seconds old. So a USB
camera is read like a network stream: a thread keeps the newest frame (see ``LiveSource``) and the
watchdog reopens a device that stopped delivering (a loose cable, a camera reset by USB power).
"""

from __future__ import annotations

import logging
import re

import cv2

from agent.capture.latest import Capture, LiveSource
from agent.errors import CaptureError

log = logging.getLogger(__name__)


def _device(device: str | int) -> str | int:
    """``/dev/video0`` stays a path; ``0`` or ``"0"`` becomes the index OpenCV expects."""
    if isinstance(device, int):
        return device
    if re.fullmatch(r"\d+", device):
        return int(device)
    return device


class UsbSource(LiveSource):
    """A V4L2 device, by path (``/dev/video0``, ``/dev/v4l/by-id/...``) or index."""

    def __init__(
        self,
        device: str | int,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        stall_timeout_s: float = 30.0,
        reconnect_max_s: float = 60.0,
        sampled: bool = False,
    ) -> None:
        if fourcc is not None and len(fourcc) != 4:
            raise CaptureError(f"{device}: fourcc must be four characters, got {fourcc!r}")
        super().__init__(
            f"v4l2:{device}",
            open_timeout_s=open_timeout_s,
            read_timeout_s=read_timeout_s,
            stall_timeout_s=stall_timeout_s,
            reconnect_max_s=reconnect_max_s,
            sampled=sampled,
        )
        self.device = _device(device)
        self.width = width
        self.height = height
        self.fps = fps
        self.fourcc = fourcc

    def _open_capture(self) -> Capture:
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"{self.name}: could not open the device (is it present, and is the user in group 'video'?)"
            )
        # The pixel format first: it decides which sizes and rates the driver accepts.
        if self.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
        if self.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        got_w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        got_h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        got_fps = cap.get(cv2.CAP_PROP_FPS)
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        got_fourcc = "".join(chr((code >> (8 * k)) & 0xFF) for k in range(4))
        if (self.width, self.height) != (None, None) and (got_w, got_h) != (
            self.width or got_w,
            self.height or got_h,
        ):
            log.warning(
                "%s: asked for %sx%s, the driver gives %dx%d",
                self.name,
                self.width,
                self.height,
                got_w,
                got_h,
            )
        log.info("%s: opened %dx%d %s at %.1f fps", self.name, got_w, got_h, got_fourcc, got_fps)
        opened: Capture = cap
        return opened
