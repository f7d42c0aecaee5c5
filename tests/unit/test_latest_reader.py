"""agent.capture.latest: a sampled reader decodes only the frames its consumer takes, and skips undecodable ones.

The camera here is a stand-in at the reader's own interface (``RawCapture``), fed by the test frame by frame, so
that what is read, decoded and handed out is known exactly; the real RTSP and MJPEG servers are in
tests/integration/test_capture_stream.py.
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


class FedCamera:
    """Hands out the bytes the test feeds it; ``decode`` makes a 2x2 frame of their first byte, and refuses
    bytes that start with ``b"bad"``. Counts its decodes."""

    def __init__(self) -> None:
        self.feed: queue.Queue[bytes] = queue.Queue()
        self.closed = threading.Event()
        self.decodes = 0

    def read_raw(self) -> bytes | None:
        while not self.closed.is_set():
            try:
                return self.feed.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def decode(self, raw: bytes) -> tuple[Image | None, bytes | None]:
        self.decodes += 1
        if raw.startswith(b"bad"):
            return None, None
        return np.full((2, 2, 3), raw[0], dtype=np.uint8), None

    def read(self) -> tuple[bool, Image | None]:
        raw = self.read_raw()
        return (False, None) if raw is None else (True, self.decode(raw)[0])

    def release(self) -> None:
        self.closed.set()


@pytest.fixture
def camera() -> Iterator[FedCamera]:
    cam = FedCamera()
    yield cam
    cam.closed.set()


def _reader(camera: FedCamera, *, sampled: bool) -> LatestFrameReader:
    reader = LatestFrameReader("fed", lambda: camera, sampled=sampled)
    reader.start()
    return reader


def _feed_and_wait(reader: LatestFrameReader, camera: FedCamera, *raws: bytes) -> None:
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
        timer = threading.Timer(0.3, camera.feed.put, args=(b"\x07",))
        timer.start()
        got = reader.newest(0, timeout_s=5)  # decodes the bad one, then waits for the next
        timer.join()
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
