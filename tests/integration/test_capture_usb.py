"""A real USB/V4L2 camera: run with CCTV_HARDWARE=1 (CCTV_USB_DEVICE picks it; default /dev/video0)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from agent.capture.factory import open_source
from agent.capture.usb import UsbSource
from agent.errors import CaptureError

DEVICE = os.environ.get("CCTV_USB_DEVICE", "/dev/video0")


@pytest.mark.hardware
def test_usb_camera_gives_fresh_frames_at_the_asked_size() -> None:
    with open_source("usb", device=DEVICE, width=640, height=480, fps=15, fourcc="MJPG") as source:
        frames = [source.read() for _ in range(5)]
        time.sleep(2.0)
        late = source.read()
    got = [f for f in frames if f is not None]
    assert len(got) == 5
    assert all(f.image.dtype == np.uint8 and f.image.ndim == 3 for f in got)
    assert got[0].image.shape == (480, 640, 3)
    assert late is not None
    assert (time.monotonic_ns() - late.monotonic_ns) / 1e9 < 0.5, "a buffered frame was handed out"


def test_missing_device_fails_with_the_reason() -> None:
    source = UsbSource(
        "/dev/video-does-not-exist", open_timeout_s=0.5, read_timeout_s=0.5, reconnect_max_s=0.5
    )
    with pytest.raises(CaptureError, match="could not open the device"):
        source.open()


def test_fourcc_must_have_four_characters() -> None:
    with pytest.raises(CaptureError, match="fourcc"):
        UsbSource(0, fourcc="MJPEG")
