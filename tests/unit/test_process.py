"""The process settings every command starts with (agent/process.py), checked in a fresh interpreter each."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

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
