"""benchmarks/picture_tolerance.py: the chain it codes stays within its tolerance, and its columns order."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.capture import ffmpeg
from benchmarks import picture_tolerance


@pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")
def test_the_columns_order_as_their_definitions_say(pets_cut: Path) -> None:
    o = picture_tolerance.measure(pets_cut, 6, 2)
    assert o.frames == 6
    # Y's codes alone cost less than Y's with the exact chroma, which cost less than the exact residuals.
    assert 0 < o.chroma_free < o.lattice < o.exact
    assert o.picture < o.exact
    # The other definition holds the picture's samples to T and not the frame's: one U or V level moves B or R
    # by 2-3 levels, so its BGR error passes T (what today's definition forbids).
    assert o.picture_error == 2
    assert o.bgr_error > 2
    assert o.codec_gain > 1.0
