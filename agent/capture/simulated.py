"""A camera that films the synthetic scene of ``agent.simulate.scene``.

In real time (the default) it behaves like a live camera: the frame handed out is the one the
scene shows *now*, so a slow consumer skips frames instead of falling behind. Without real time it
returns every frame as fast as it is asked, for benchmarks and deterministic tests.
"""

from __future__ import annotations

import threading
import time

from agent.capture.base import CaptureSource, Frame
from agent.capture.clock import clock_synchronised
from agent.errors import CaptureError
from agent.simulate.scene import Scene, SceneSettings

POLL_S = 1.0
"""Longest wait before looking at a close request again (low frame rates sleep long)."""


class SimulatedSource(CaptureSource):
    """Frames of a seeded ``Scene``; ``Frame.source_index`` is the scene's frame index.

    ``close()`` and ``interrupt()`` may be called from another thread; a ``read()`` pacing itself then returns
    ``None``.
    """

    def __init__(
        self, settings: SceneSettings | None = None, *, realtime: bool = True, max_frames: int | None = None
    ):
        self.settings = settings if settings is not None else SceneSettings()
        self.realtime = realtime
        self.max_frames = max_frames
        self.name = f"simulated:seed={self.settings.seed}"
        self._scene: Scene | None = None
        self._closed = threading.Event()
        self._next = 0
        self._start = 0.0

    def open(self) -> None:
        if self._scene is None:
            self._scene = Scene(self.settings)
        self._closed.clear()
        self._next = 0
        self._start = time.monotonic()

    def read(self) -> Frame | None:
        if self._scene is None:
            raise CaptureError(f"{self.name}: source is not open")
        index = self._next
        if self.realtime:
            # Wait for frame ``index`` to be "exposed", or take the newest one if we are late.
            index = max(index, int((time.monotonic() - self._start) * self.settings.fps))
            due = self._start + index / self.settings.fps
            while (left := due - time.monotonic()) > 0:
                if self._closed.wait(min(POLL_S, left)):
                    return None
        if self._closed.is_set() or (self.max_frames is not None and index >= self.max_frames):
            return None
        self._next = index + 1
        return Frame.now(self._scene.frame(index), clock_synced=clock_synchronised(), source_index=index)

    def close(self) -> None:
        self._closed.set()

    def interrupt(self) -> None:
        self._closed.set()
