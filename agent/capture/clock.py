"""Whether the wall clock can be trusted for dating frames.

A Pi has no real-time clock: until NTP has synchronised it, ``time.time()`` may be days off. Every
frame records whether the clock was synchronised when it was taken, so that the archive can flag
dates it should not trust. Asking the kernel costs a system call, so the answer is cached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_S = 60.0
"""How long one answer is reused: synchronisation changes rarely, frames come many times a second."""

_TIME_ERROR = 5
"""``adjtimex`` return value when the kernel considers the clock unsynchronised (``STA_UNSYNC``)."""
_TIMEX_SIZE = 512
"""Generous size for ``struct timex`` (208 bytes on 64-bit Linux); ``modes`` = 0 makes it a pure read."""
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")

_lock = threading.Lock()
_cached: tuple[float, bool] | None = None


def _kernel_says() -> bool | None:
    """The kernel's own view (what ``timedatectl`` shows as "System clock synchronized"), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(_TIMEX_SIZE)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def _probe() -> bool:
    kernel = _kernel_says()
    if kernel is not None:
        return kernel
    return _TIMESYNCD_FLAG.exists()


def clock_synchronised(*, now: float | None = None) -> bool:
    """True when the system clock is NTP-synchronised; re-checked at most every ``CACHE_S`` seconds."""
    global _cached
    t = time.monotonic() if now is None else now
    with _lock:
        if _cached is not None and t - _cached[0] < CACHE_S:
            return _cached[1]
    synced = _probe()
    with _lock:
        if _cached is None or _cached[1] != synced:
            log.info(
                "system clock is %s", "synchronised" if synced else "NOT synchronised (frame dates untrusted)"
            )
        _cached = (t, synced)
    return synced
