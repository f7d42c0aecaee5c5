"""The seed re-implementation used by the benchmark really loses pixels, and the exact variant does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.capture.files import iter_images
from benchmarks.seed_method import (
    exact_difference,
    exact_reconstruct,
    packbits_tiff,
    run_seed,
    seed_difference,
    seed_reconstruct,
    unpack_tiff,
)


def _pair(pets_cut: Path) -> tuple[np.ndarray, np.ndarray]:
    images = list(iter_images(pets_cut, limit=30))
    return images[0], images[29]


def test_cv2_subtract_saturates_so_the_seed_reconstruction_is_lossy(pets_cut: Path) -> None:
    key, member = _pair(pets_cut)
    difference = unpack_tiff(packbits_tiff(seed_difference(member, key)))
    rebuilt = seed_reconstruct(key, difference)
    darker = member < key  # exactly the pixels cv2.subtract clips to 0
    assert darker.any()
    error = np.abs(rebuilt.astype(np.int16) - member.astype(np.int16))
    assert error.max() > 0
    np.testing.assert_array_equal(error > 0, darker)
    np.testing.assert_array_equal(rebuilt, np.maximum(member, key))


def test_mod_256_difference_through_packbits_tiff_is_exact(pets_cut: Path) -> None:
    key, member = _pair(pets_cut)
    difference = unpack_tiff(packbits_tiff(exact_difference(member, key)))
    np.testing.assert_array_equal(exact_reconstruct(key, difference), member)


def test_run_seed_reports_loss_and_the_exact_variant_none(pets_cut: Path) -> None:
    images = list(iter_images(pets_cut, limit=6))
    lossy = run_seed(images)
    exact = run_seed(images, exact=True)
    assert lossy.max_abs_error is not None
    assert lossy.max_abs_error > 0
    assert exact.max_abs_error == 0
    assert lossy.keys == exact.keys == 1  # consecutive frames of a fixed camera stay above SSIM 0.5
    assert lossy.raw_bytes == 6 * 768 * 576 * 3
    assert lossy.ratio is not None
    assert lossy.ratio > 1.0
