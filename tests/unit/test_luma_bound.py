"""benchmarks/luma_bound.py: the model costs and the two ceilings it derives from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.capture import ffmpeg
from benchmarks import luma_bound


def test_a_still_plane_costs_nothing_and_noise_about_eight_bits_a_sample() -> None:
    cost, context = luma_bound.sample_costs(np.full((64, 64), 37, dtype=np.uint8))
    assert not cost.any()
    assert not context.any()  # nothing moves: the quietest class
    noise = np.random.default_rng(5).integers(0, 256, (512, 512), dtype=np.uint8)
    cost, context = luma_bound.sample_costs(noise)
    assert 7.5 < cost.mean() < 8.0  # the histograms' own entropy, a little under 8 for a finite sample
    assert context.max() == 15  # busy neighbours: the busiest class


@pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")
def test_the_ceilings_order_as_their_assumptions_say(pets_cut: Path) -> None:
    b = luma_bound.bound(pets_cut, 6, 2)
    assert b.frames == 6
    assert b.exact_y_bits > b.exact_chroma_bits > 0
    # Each Y sample saves at most 2 bits per sample; a context class's mean may save more than its samples
    # would one by one, so the per-context ceiling leaves fewer bits; the chroma rows are kept in both.
    assert b.exact_chroma_bits < b.per_context_bits <= b.per_sample_bits < b.exact_bits
    assert b.per_sample_bits >= b.exact_bits - 2 * (6 * 576 * 768)
    assert b.codec_gain > 1.0
