"""Keep only the newest frame of a live source, and keep the source alive.

A camera produces frames whether or not anyone wants them; OpenCV and FFmpeg buffer what is not
read. A consumer that samples one frame every 10 s would otherwise get a frame that is 10 s (or
more) old. So a thread reads continuously and keeps only the newest frame; ``newest()`` hands out
that frame, never one the consumer has already seen. A ``sampled`` reader serves a consumer that takes one
frame in many (``agent.sample_interval_s``, a time-lapse): where the capture can hand out each frame's bytes
before decoding or converting them (``RawCapture``: the ``ffmpeg`` child's yuv420p pictures, an MJPEG stream's
JPEGs), it keeps the newest as they came, and only the frames the consumer takes are decoded, in the
consumer's thread; one that does not decode is skipped for the next. Where only the reading thread may decode
(``GrabCapture``: OpenCV's captures, a USB camera among them), it grabs every frame and decodes the first one
grabbed while the consumer waits. Why not always: a consumer that codes every frame it can would then
decode in its own thread what the reader's thread decoded on another core meanwhile, a 1080p picture's 2 ms
added to its own; sampling one frame a second of a 25 fps camera, 24 in 25 were decoded for nobody.

The same thread pair keeps the source alive: a stall watchdog reopens a source that has produced
nothing for ``stall_timeout_s`` (a paused server keeps the TCP connection open and sends nothing),
and a failed open or read is retried with doubling back-off capped at ``reconnect_max_s``, reset
once a connection delivers frames again. Every wait wakes at least once a second, so ``stop()``
is noticed promptly.

Threads and who owns what:

* **Session thread** (one per connection attempt, ``_session``): the only thread that ever touches
  its ``Capture`` -- it opens, reads and releases it. OpenCV captures are not thread-safe, so a
  stalled session is *abandoned*, never released from outside: its ``cancel`` event is set, its
  generation is retired, and it releases the capture itself if its blocked read ever returns. A capture
  that can be interrupted from another thread (``Interruptible``: the ``ffmpeg`` child, which is killed)
  is interrupted too, so its read returns at once instead of at its socket timeout: a camera that allows
  few RTSP sessions is not kept busy by an abandoned one while the next connects.
* **Supervisor thread** (``_supervise``): owns ``_generation`` writes, starts sessions, runs the
  watchdog and the back-off. It holds ``_cond`` only to read or retire the generation.
* **Consumer** (the caller of ``newest()``): reads under ``_cond``, and counts itself in ``_waiting`` while
  it waits there; decodes the raw frame it took, if any, after releasing it.
* ``_cond`` (a ``Condition`` over one lock) guards ``_live`` (the current session's capture, for
  interrupting it), ``_frame``, ``_seq``, ``_generation``, ``_waiting``,
  ``_last_frame_mono`` and ``stats``/``last_error``. A session publishes under it only while its
  generation is current, so an abandoned session can never overwrite a newer connection's frame.
* ``_stop`` (an ``Event``) may be set from any thread; everyone polls it at least once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

from agent.capture import ffmpeg
from agent.capture.base import CaptureSource, Frame, Image
from agent.capture.clock import clock_synchronised
from agent.errors import CaptureError

log = logging.getLogger(__name__)

POLL_S = 1.0
"""Longest any wait in this module lasts before it looks at the stop request again."""


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` the reader needs."""

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


@runtime_checkable
class Interruptible(Protocol):
    """A capture whose blocked ``read()`` another thread can end (it then returns no frame)."""

    def interrupt(self) -> None: ...


@runtime_checkable
class RawCapture(Protocol):
    """A capture that can hand out each frame's bytes as they came and decode them later, in any thread."""

    def read_raw(self) -> bytes | None: ...

    def decode(self, raw: bytes) -> tuple[Image | None, bytes | None]:
        """The frame (None when the bytes do not decode) and the yuv420p picture to hand on with it, if any."""
        ...


@runtime_checkable
class GrabCapture(Protocol):
    """A capture whose reading and decoding are two calls (OpenCV's ``grab()`` and ``retrieve()``): a USB
    camera's MJPEG is decoded in ``retrieve()``, an OpenCV-decoded stream's frame converted to BGR there. Both
    calls must come from the thread that reads."""

    def grab(self) -> bool: ...

    def retrieve(self) -> tuple[bool, Any]: ...


class _Undecoded:
    """A frame's bytes as the capture gave them, with the clocks read when they came; decoded only when a
    consumer takes them (then once, however often they are taken)."""

    __slots__ = (
        "_clock_synced", "_decode", "_decoded", "_frame", "_index", "_monotonic_ns", "_raw", "_wall_ns", "size"
    )  # fmt: skip

    def __init__(self, raw: bytes, capture: RawCapture, clock_synced: bool, index: int) -> None:
        self._raw = raw
        self._decode = capture.decode
        self._wall_ns = time.time_ns()
        self._monotonic_ns = time.monotonic_ns()
        self._clock_synced = clock_synced
        self._index = index
        self._decoded = False
        self._frame: Frame | None = None
        self.size = len(raw)

    @property
    def monotonic_ns(self) -> int:
        return self._monotonic_ns

    def frame(self) -> tuple[Frame | None, bool]:
        """The frame (None: the bytes do not decode), and whether this call decoded it."""
        if self._decoded:
            return self._frame, False
        image, picture = self._decode(self._raw)
        if image is not None:
            self._frame = Frame(
                image, self._wall_ns, self._monotonic_ns, self._clock_synced, self._index, picture
            )
        self._decoded = True
        return self._frame, True


Opener = Callable[[], Capture]
"""Opens the source (blocking up to its own open timeout) or raises ``CaptureError`` saying why."""


@dataclass(slots=True)
class ReaderStats:
    """Counters for logs, health reports and tests."""

    opens: int = 0
    """Connections that opened."""
    failures: int = 0
    """Opens or reads that failed (each one leads to a reconnect)."""
    stalls: int = 0
    """Times the watchdog gave up on a silent connection."""
    frames: int = 0
    """Frames received in total, kept or not."""
    decoded: int = 0
    """Frames decoded because the consumer took them (a ``sampled`` reader of a ``RawCapture``; elsewhere every
    frame comes decoded)."""
    undecodable: int = 0
    """Of those, the ones whose bytes did not decode (skipped for the next frame)."""


class LatestFrameReader:
    """Reads a live source on its own threads; ``newest()`` returns the most recent unseen frame."""

    def __init__(
        self,
        name: str,
        opener: Opener,
        *,
        open_timeout_s: float = 10.0,
        stall_timeout_s: float = 30.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 60.0,
        sampled: bool = False,
    ) -> None:
        if not (stall_timeout_s > 0 and open_timeout_s > 0 and 0 < reconnect_min_s <= reconnect_max_s):
            raise ValueError(
                f"{name}: need positive timeouts and reconnect_min_s <= reconnect_max_s (got stall "
                f"{stall_timeout_s}, open {open_timeout_s}, reconnect {reconnect_min_s}..{reconnect_max_s})"
            )
        self.name = name
        self._opener = opener
        self._open_timeout_s = open_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._sampled = sampled
        self._waiting = 0  # consumers waiting in newest() (what a sampled GrabCapture's session decodes for)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._frame: Frame | _Undecoded | None = None
        self._live: Capture | None = None
        self._seq = 0
        self._generation = 0
        self._last_frame_mono = 0.0
        self.stats = ReaderStats()
        self.last_error: str | None = None
        self._supervisor: threading.Thread | None = None
        self._session_thread: threading.Thread | None = None

    # -- consumer side ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor is not None:
            return
        self._supervisor = threading.Thread(target=self._supervise, name=f"capture-{self.name}", daemon=True)
        self._supervisor.start()

    def newest(self, after_seq: int, timeout_s: float | None = None) -> tuple[int, Frame] | None:
        """The newest frame with a sequence number above ``after_seq``, waiting for one if needed.

        Returns ``(seq, frame)``, or ``None`` when stopped or when ``timeout_s`` passed first. Raw bytes are
        decoded here, outside the lock, so the reader goes on reading meanwhile; a frame that does not decode
        is skipped, and the next one waited for.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (got := self._newer(after_seq, deadline)) is not None:
            seq, held = got
            frame = held if isinstance(held, Frame) else self._decoded(held)
            if frame is not None:
                return seq, frame
            after_seq = seq
        return None

    def _newer(self, after_seq: int, deadline: float | None) -> tuple[int, Frame | _Undecoded] | None:
        """The newest frame, decoded or not, with a sequence number above ``after_seq``, once there is one;
        None when stopped or past ``deadline``."""
        with self._cond:
            while not self._stop.is_set():
                if self._frame is not None and self._seq > after_seq:
                    return self._seq, self._frame
                wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._waiting += 1  # seen by a grabbing session only while this waits (the lock is free)
                try:
                    self._cond.wait(wait)
                finally:
                    self._waiting -= 1
        return None

    def _decoded(self, held: _Undecoded) -> Frame | None:
        """``held`` decoded (counted the first time), or None when it does not decode."""
        frame, decoded = held.frame()
        if decoded:
            with self._cond:
                self.stats.decoded += 1
                self.stats.undecodable += frame is None
            if frame is None:
                log.warning("%s: skipped an undecodable frame (%d bytes)", self.name, held.size)
        return frame

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self, join_s: float = 1.0) -> None:
        """Ask every thread to end; wait up to ``join_s`` for them so the capture is released."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._interrupt_live()
        deadline = time.monotonic() + join_s
        for thread in (self._supervisor, self._session_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning(
                        "%s: thread %s still blocked in the capture library; leaving it",
                        self.name,
                        thread.name,
                    )

    # -- supervisor --------------------------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = self._reconnect_min_s
        while not self._stop.is_set():
            with self._cond:
                self._generation += 1
                generation = self._generation
                frames_before = self.stats.frames
            cancel = threading.Event()
            session = threading.Thread(
                target=self._session,
                args=(generation, cancel),
                name=f"capture-{self.name}-{generation}",
                daemon=True,
            )
            self._session_thread = session
            session.start()
            reason = self._watch(session, time.monotonic())
            cancel.set()
            self._interrupt_live()
            with self._cond:
                self._generation += 1  # retire the session: it may no longer publish
                delivered = self.stats.frames > frames_before
                if reason == "stall":
                    self.stats.stalls += 1
                if self.last_error is None or reason == "stall":
                    self.last_error = reason
            if self._stop.is_set():
                break
            backoff = self._reconnect_min_s if delivered else min(2 * backoff, self._reconnect_max_s)
            said = self.last_error or reason
            if not said.startswith(f"{self.name}: "):  # the session's and the opener's errors name it already
                said = f"{self.name}: {said}"
            log.warning("%s; reconnecting in %.1f s", said, backoff)
            self._sleep(backoff)

    def _interrupt_live(self) -> None:
        """End the current session's blocked read where its capture allows that (``Interruptible``)."""
        with self._cond:
            live: object = self._live  # any Capture; some are Interruptible too
            self._live = None
        if isinstance(live, Interruptible):
            live.interrupt()

    def _watch(self, session: threading.Thread, started: float) -> str:
        """Wait while ``session`` is healthy; return why it is not (or "stopped")."""
        while not self._stop.is_set():
            session.join(POLL_S)
            if not session.is_alive():
                return "connection ended"
            with self._cond:
                last = max(started, self._last_frame_mono)
                frames = self._last_frame_mono >= started
            silent = time.monotonic() - last
            limit = self._stall_timeout_s if frames else self._stall_timeout_s + self._open_timeout_s
            if silent > limit:
                log.warning("%s: no frame for %.1f s; abandoning the connection", self.name, silent)
                return "stall"
        return "stopped"

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stop.wait(min(POLL_S, left)):
            pass

    # -- session -----------------------------------------------------------------------------------

    def _fail(self, generation: int, message: str) -> None:
        with self._cond:
            if generation == self._generation:
                self.stats.failures += 1
                self.last_error = message

    def _session(self, generation: int, cancel: threading.Event) -> None:
        try:
            cap = self._opener()
        except CaptureError as e:
            self._fail(generation, str(e))
            return
        except Exception as e:  # cv2.error and friends: anything the library throws ends this attempt
            self._fail(generation, f"{self.name}: open failed: {e!r}")
            return
        with self._cond:
            current = generation == self._generation
            if current:
                self.stats.opens += 1
                self.last_error = None
                self._live = cap
        if not current:  # retired while it opened: nobody wants this connection
            cap.release()
            return
        log.info("%s: connected", self.name)
        raw_capture = cap if self._sampled and isinstance(cap, RawCapture) else None
        grabbing = cap if self._sampled and raw_capture is None and isinstance(cap, GrabCapture) else None
        try:
            while not (cancel.is_set() or self._stop.is_set()):
                if grabbing is not None:
                    if not self._grab(generation, grabbing):
                        return
                    continue
                image: Image | None = None
                raw: bytes | None = None
                if raw_capture is not None:
                    raw = raw_capture.read_raw()
                    ok = raw is not None
                else:
                    ok, image = cap.read()
                    ok = ok and image is not None
                if not ok:
                    self._fail(generation, f"{self.name}: read failed or timed out")
                    return
                synced = clock_synchronised()
                with self._cond:
                    if generation != self._generation:
                        return
                    held: Frame | _Undecoded
                    if image is not None:
                        held = Frame.now(
                            image,
                            clock_synced=synced,
                            source_index=self.stats.frames,
                            picture=ffmpeg.picture_of(cap),
                        )
                    elif raw_capture is not None and raw is not None:
                        held = _Undecoded(raw, raw_capture, synced, self.stats.frames)
                    else:  # pragma: no cover - ``ok`` says that one of the two came
                        return
                    self.stats.frames += 1
                    self._seq += 1
                    self._frame = held
                    self._last_frame_mono = held.monotonic_ns / 1e9
                    self._cond.notify_all()
        except Exception as e:  # a library error mid-stream is a reconnect, not a crash of the agent
            self._fail(generation, f"{self.name}: read raised {e!r}")
        finally:
            with self._cond:
                if self._live is cap:
                    self._live = None
            cap.release()

    def _grab(self, generation: int, cap: GrabCapture) -> bool:
        """Grab the next frame, and decode it only while the consumer waits for one; False when the connection
        failed or was retired. A frame decoded for a consumer that stopped waiting meanwhile is dropped: one
        kept would be handed out stale at the next request."""
        if not cap.grab():
            self._fail(generation, f"{self.name}: read failed or timed out")
            return False
        synced = clock_synchronised()
        wall_ns, monotonic_ns = time.time_ns(), time.monotonic_ns()
        with self._cond:
            if generation != self._generation:
                return False
            index = self.stats.frames
            self.stats.frames += 1
            self._last_frame_mono = monotonic_ns / 1e9
            if not self._waiting:
                return True
        ok, image = cap.retrieve()
        with self._cond:
            if generation != self._generation:
                return False
            self.stats.decoded += 1
            if not ok or image is None:
                self.stats.undecodable += 1
            elif self._waiting:
                self._seq += 1
                self._frame = Frame(image, wall_ns, monotonic_ns, synced, index)
                self._cond.notify_all()
        if not ok or image is None:
            log.warning("%s: skipped a frame that did not decode", self.name)
        return True


class LiveSource(CaptureSource):
    """A camera or stream read through a ``LatestFrameReader``: ``read()`` returns the newest frame.

    ``open()``, ``read()`` and ``close()`` may be called from different threads: ``close()`` or ``interrupt()``
    from the signals thread wakes a ``read()`` blocked in another, which then returns ``None``.
    """

    def __init__(
        self,
        name: str,
        *,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        stall_timeout_s: float = 30.0,
        reconnect_max_s: float = 60.0,
        sampled: bool = False,
    ) -> None:
        """``sampled``: the caller takes one frame in many (see ``LatestFrameReader``)."""
        self.name = name
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.sampled = sampled
        self._reader: LatestFrameReader | None = None
        self._seen = 0

    def __enter__(self) -> Self:
        self.open()
        return self

    def _open_capture(self) -> Capture:
        """Open one connection (runs on a session thread); raise ``CaptureError`` saying why not."""
        raise NotImplementedError

    @property
    def reader(self) -> LatestFrameReader:
        if self._reader is None:
            raise CaptureError(f"{self.name}: source is not open")
        return self._reader

    def open(self) -> None:
        """Connect and wait for the first frame; raise ``CaptureError`` when none comes in time.

        Failing here (rather than retrying forever) lets a misconfigured camera show up at start;
        after a first frame, every loss of the source is retried in the background.
        """
        if self._reader is not None and not self._reader.stopped:
            return
        reader = LatestFrameReader(
            self.name,
            self._open_capture,
            open_timeout_s=self.open_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
            reconnect_max_s=self.reconnect_max_s,
            sampled=self.sampled,
        )
        reader.start()
        if reader.newest(0, self.open_timeout_s + self.read_timeout_s) is None:
            reader.stop()
            raise CaptureError(
                f"{self.name}: no frame within {self.open_timeout_s + self.read_timeout_s:.0f} s: "
                f"{reader.last_error or 'no error reported'}"
            )
        self._reader = reader
        self._seen = 0

    def read(self, timeout_s: float | None = None) -> Frame | None:
        """The newest frame not handed out before; ``None`` once closed.

        Waits (across reconnects) for a new frame; with ``timeout_s``, raises ``CaptureError`` when
        none came in time, so that a main loop can log the outage and keep its other duties.
        """
        reader = self.reader
        got = reader.newest(self._seen, timeout_s)
        if got is None:
            if reader.stopped:
                return None
            raise CaptureError(
                f"{self.name}: no new frame within {timeout_s} s: {reader.last_error or 'stalled'}"
            )
        self._seen, frame = got
        return frame

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    def interrupt(self) -> None:
        self.close()
