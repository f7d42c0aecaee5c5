"""The process settings every command starts with (agent/process.py), checked in a fresh interpreter each."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from agent.codec import native

ENCODE_AND_COUNT_FAULTS = """
import json, resource, sys
import cv2
from agent import process
from agent.codec.encoder import FrameEncoder
from agent.capture.files import iter_images
configured = sys.argv[1] == "configure"
if configured:
    process.configure()
ok = process.keep_freed_memory() if configured else False
from pathlib import Path
frames = list(iter_images(Path(sys.argv[2]), 24))
encoder = FrameEncoder("cam")
for i, frame in enumerate(frames[:4]):  # warm up: the heap grows to what a frame needs
    encoder.encode(frame, i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i, frame in enumerate(frames[4:], 4):
    encoder.encode(frame, i)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults_per_frame": faults / 20, "threads": cv2.getNumThreads(), "mallopt": ok}))
"""


def _run(mode: str, clip: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", ENCODE_AND_COUNT_FAULTS, mode, str(clip)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc thresholds are glibc's")
def test_configured_encoder_reuses_its_heap_instead_of_faulting_in_pages(pets_cut: Path) -> None:
    configured = _run("configure", pets_cut)
    assert configured["mallopt"] is True
    assert configured["threads"] == 1
    # Without configure() the same loop faulted in 629 fresh pages a frame on the team's VM (glibc 2.36).
    assert configured["faults_per_frame"] < 10, configured


CODE_PLANES_AND_COUNT_ARENAS = """
import ctypes, sys
import numpy as np
from agent import process
from agent.codec import native
if sys.argv[1] == "configure":
    process.configure()
planes = np.zeros((3, 720, 1280), np.uint8)
planes[:, ::3, ::5] = 7
for _ in range(3):
    native.ctx_decode(native.ctx_encode(planes, threads=3), *planes.shape, threads=3)
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block a arena, on stderr
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are glibc's")
@pytest.mark.skipif(not native.AVAILABLE, reason="the extension codes planes on threads")
def test_the_extension_threads_allocate_from_the_one_heap() -> None:
    """Each thread glibc sees allocating gets an arena of its own that keeps its high-water mark (8 MB more
    peak RSS for the agent at 1080p); configured, the planes' threads share the main heap."""
    arenas = {}
    for mode in ("configure", "defaults"):
        out = subprocess.run(
            [sys.executable, "-c", CODE_PLANES_AND_COUNT_ARENAS, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        arenas[mode] = out.stderr.count("Arena ")
    assert arenas["configure"] == 1, arenas
    assert arenas["defaults"] > 1, arenas  # the threads did allocate: what the setting is for
