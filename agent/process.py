"""Process-wide settings every ``cctv-agent`` command starts with: one OpenCV thread, one heap that keeps memory.

Both were measured (docs/benchmarks.md, "Process settings"):

- **OpenCV's thread pool.** The codec calls OpenCV only for small per-frame steps (the SSIM shrink and blurs,
  colour conversion); with its default pool of one thread per core, the workers spin in ``sched_yield``
  between those calls (130 000 calls in 150 frames) and take CPU a Pi needs for capture and the broker link.
  One thread costs nothing measurable in speed.
- **glibc's malloc.** Buffers of a frame's size (hundreds of kB to a few MB) are above glibc's default mmap
  threshold and its dynamic trim threshold, so every frame mapped fresh pages and gave them back: 290-330
  page faults a frame on 768-wide video, 0.5-1.5 ms of kernel time, 10-20 % of the encoder's time, varying
  with the process's history. With fixed thresholds the freed buffers stay in the heap and are reused (0
  faults a frame). Peak RSS hardly moves: it is set by the frames in flight either way (`bench` at 1080p,
  tolerance 2: 118.0 MB against 116.5 MB with the defaults). And one arena for every thread: the extension
  codes a frame's planes on threads of their own (``agent.codec.native.THREADS``), and glibc gave each thread
  an arena that kept its own high-water mark; the agent replaying 1080p stills peaked at 118.0 MB with them,
  110.2 MB with one, at 34-40 frames a second both ways (a few large allocations a frame do not contend).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

import cv2

log = logging.getLogger(__name__)

OPENCV_THREADS = 1
MMAP_THRESHOLD = 32 * 1024 * 1024
"""Allocations below this come from the heap (glibc's largest allowed value on 64-bit systems)."""
TRIM_THRESHOLD = 64 * 1024 * 1024
"""Free memory at the top of the heap is returned to the system only beyond this."""
ARENAS = 1
"""Every thread allocates from the main heap."""
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def configure() -> None:
    """Apply both settings to this process; where one is unavailable (not glibc, 32-bit limits) log and go on."""
    cv2.setNumThreads(OPENCV_THREADS)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Fix glibc's malloc thresholds and arenas (see the module note); False where the C library is not glibc or
    refuses."""
    if platform.libc_ver()[0] != "glibc":
        log.debug("not glibc: malloc thresholds left as they are")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:  # pragma: no cover - glibc always has mallopt
        log.debug("mallopt unavailable: %s", e)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    ok = bool(mallopt(_M_ARENA_MAX, ARENAS)) and ok
    if not ok:  # 32-bit glibc caps the mmap threshold at 512 kB: large frames keep mapping fresh pages
        log.debug("glibc refused the malloc thresholds; frame buffers will be mapped per frame")
    return ok
