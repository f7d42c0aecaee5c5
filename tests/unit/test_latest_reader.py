"""agent.capture.latest: a sampled reader decodes only the frames its consumer takes, and skips undecodable ones.

The cameras here are stand-ins at the reader's own interfaces (``RawCapture``, ``GrabCapture``), fed by the test
frame by frame, so that what is read, decoded and handed out is known exactly; the real RTSP and MJPEG servers
are in tests/integration/test_capture_stream.py.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from agent.capture.base import Image
from agent.capture.latest import LatestFrameReader


class _Fed:
    """Hands out the bytes the test feeds it; decoding makes a 2x2 frame of their first byte, and refuses
    bytes that start with ``b"bad"``. Counts its decodes."""

    def __init__(self) -> None:
        self.feed: queue.Queue[bytes] = queue.Queue()
        self.closed = threading.Event()
        self.decodes = 0

    def _next(self) -> bytes | None:
        while not self.closed.is_set():
            try:
                return self.feed.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def _decode(self, raw: bytes) -> Image | None:
        self.decodes += 1
        return None if raw.startswith(b"bad") else np.full((2, 2, 3), raw[0], dtype=np.uint8)

    def release(self) -> None:
        self.closed.set()


class FedCamera(_Fed):
    """A ``RawCapture``, as the ffmpeg child and an MJPEG stream are."""

    def read_raw(self) -> bytes | None:
        return self._next()

    def decode(self, raw: bytes) -> tuple[Image | None, bytes | None]:
        return self._decode(raw), None

    def read(self) -> tuple[bool, Image | None]:
        raw = self.read_raw()
        return (False, None) if raw is None else (True, self._decode(raw))


@pytest.fixture
def camera() -> Iterator[FedCamera]:
    cam = FedCamera()
    yield cam
    cam.closed.set()


def _reader(camera: _Fed, *, sampled: bool) -> LatestFrameReader:
    reader = LatestFrameReader("fed", lambda: camera, sampled=sampled)
    reader.start()
    return reader


def _feed_and_wait(reader: LatestFrameReader, camera: _Fed, *raws: bytes) -> None:
    before = reader.stats.frames
    for raw in raws:
        camera.feed.put(raw)
    deadline = time.monotonic() + 5.0
    while reader.stats.frames < before + len(raws) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.stats.frames == before + len(raws), "the reader did not read every frame fed"


@pytest.mark.parametrize(("sampled", "decodes"), [(True, 1), (False, 5)])
def test_only_the_frame_taken_is_decoded_when_sampled(camera: FedCamera, sampled: bool, decodes: int) -> None:
    reader = _reader(camera, sampled=sampled)
    try:
        _feed_and_wait(reader, camera, b"\x01", b"\x02", b"\x03", b"\x04", b"\x05")
        got = reader.newest(0, timeout_s=5)
        assert got is not None
        seq, frame = got
        assert seq == 5
        assert frame.image[0, 0, 0] == 5  # the newest
        assert frame.source_index == 4
        assert camera.decodes == decodes
        assert reader.stats.decoded == (1 if sampled else 0)
        again = reader.newest(0, timeout_s=5)  # taken again (open() then read() do that): decoded once
        assert again is not None
        assert again[1] is frame
        assert camera.decodes == decodes
    finally:
        camera.closed.set()
        reader.stop()


def test_an_undecodable_frame_is_skipped_for_the_next(
    camera: FedCamera, caplog: pytest.LogCaptureFixture
) -> None:
    reader = _reader(camera, sampled=True)
    try:
        _feed_and_wait(reader, camera, b"bad jpeg")
        feeder = _once_waiting(reader, camera, b"\x07")  # once the bad one is decoded and newest() waits
        got = reader.newest(0, timeout_s=5)
        feeder.join()
        assert got is not None
        assert got[0] == 2
        assert got[1].image[0, 0, 0] == 7
        assert (reader.stats.decoded, reader.stats.undecodable) == (2, 1)
        assert "skipped an undecodable frame (8 bytes)" in caplog.text
        # Nothing newer than the bad frame but it: the wait ends with the timeout, no frame.
        _feed_and_wait(reader, camera, b"bad again")
        assert reader.newest(2, timeout_s=0.3) is None
    finally:
        camera.closed.set()
        reader.stop()


class FedGrabCamera(_Fed):
    """A ``GrabCapture``, as OpenCV's captures are: ``grab()`` takes the next frame, ``retrieve()`` decodes it."""

    def __init__(self) -> None:
        super().__init__()
        self._grabbed: bytes | None = None

    def grab(self) -> bool:
        self._grabbed = self._next()
        return self._grabbed is not None

    def retrieve(self) -> tuple[bool, Image | None]:
        assert self._grabbed is not None
        image = self._decode(self._grabbed)
        return image is not None, image

    def read(self) -> tuple[bool, Image | None]:
        return self.retrieve() if self.grab() else (False, None)


@pytest.fixture
def grab_camera() -> Iterator[FedGrabCamera]:
    cam = FedGrabCamera()
    yield cam
    cam.closed.set()


def _once_waiting(reader: LatestFrameReader, camera: _Fed, *raws: bytes) -> threading.Thread:
    """Feed ``raws`` once the test waits in newest() (the reader counts it in ``_waiting``): a timer could fire
    before the wait begins on a loaded machine, and the frames would then be read while nobody waits."""

    def feed() -> None:
        deadline = time.monotonic() + 5.0
        while not reader._waiting and time.monotonic() < deadline:
            time.sleep(0.002)
        for raw in raws:
            camera.feed.put(raw)

    feeder = threading.Thread(target=feed)
    feeder.start()
    return feeder


def test_a_grabbing_reader_decodes_only_while_the_consumer_waits(grab_camera: FedGrabCamera) -> None:
    """Frames grabbed while nobody waits are not decoded; the one grabbed while the consumer waits is, and it is
    the one handed out (fresh, not one grabbed before the request)."""
    reader = _reader(grab_camera, sampled=True)
    try:
        _feed_and_wait(reader, grab_camera, b"\x01", b"\x02", b"\x03")
        assert grab_camera.decodes == 0
        feeder = _once_waiting(reader, grab_camera, b"\x04")
        got = reader.newest(0, timeout_s=5)
        feeder.join()
        assert got is not None
        assert got[1].image[0, 0, 0] == 4
        assert got[1].source_index == 3
        assert grab_camera.decodes == 1
        assert (reader.stats.frames, reader.stats.decoded) == (4, 1)
        feeder = _once_waiting(reader, grab_camera, b"bad", b"\x06")  # the next is decoded instead
        got = reader.newest(got[0], timeout_s=5)
        feeder.join()
        assert got is not None
        assert got[1].image[0, 0, 0] == 6
        assert (reader.stats.decoded, reader.stats.undecodable) == (3, 1)
    finally:
        grab_camera.closed.set()
        reader.stop()


def test_an_unsampled_reader_decodes_every_grab(grab_camera: FedGrabCamera) -> None:
    reader = _reader(grab_camera, sampled=False)
    try:
        _feed_and_wait(reader, grab_camera, b"\x01", b"\x02", b"\x03")
        assert grab_camera.decodes == 3  # read() decodes as it reads
        got = reader.newest(0, timeout_s=5)
        assert got is not None
        assert got[1].image[0, 0, 0] == 3
        assert reader.stats.decoded == 0
    finally:
        grab_camera.closed.set()
        reader.stop()
