"""Key selection: every rule on synthetic frames, and the SSIM rule on real footage."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.codec.keyselect import KeyDecision, KeyReason, KeySelector
from agent.codec.settings import CodecSettings
from agent.codec.ssim import SsimReference
from tests.fixtures.data import PETS_CUT, shared_set

Image = npt.NDArray[np.uint8]
SECOND = 1_000_000_000
CLIP_FRAMES = 60


def scene(seed: int, shape: tuple[int, ...] = (120, 160, 3)) -> Image:
    """A textured picture: smoothed noise, so that SSIM has structure to compare."""
    noise = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return np.asarray(cv2.GaussianBlur(noise, (5, 5), 1.0), dtype=np.uint8)


def jitter(image: Image, seed: int) -> Image:
    """The same picture with ±1 sensor noise: SSIM stays near 1 but below it."""
    noise = np.random.default_rng(seed).integers(-1, 2, image.shape)
    jittered: Image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return jittered


def settings(**overrides: float) -> CodecSettings:
    values: dict[str, float] = {
        "threshold": 0.5,
        "max_key_interval_frames": 1000,
        "max_key_interval_s": 0.0,
        "ssim_downscale": 1,
    }
    values.update(overrides)
    return CodecSettings(**values)  # type: ignore[arg-type]


def run(selector: KeySelector, frames: list[Image], step_ns: int = SECOND // 25) -> list[KeyDecision]:
    return [selector.decide(frame, index * step_ns) for index, frame in enumerate(frames)]


@cache
def clip_frames(path: Path) -> tuple[Image, ...]:
    capture = cv2.VideoCapture(str(path))
    frames: list[Image] = []
    try:
        while len(frames) < CLIP_FRAMES:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(np.asarray(frame, dtype=np.uint8))
    finally:
        capture.release()
    assert len(frames) == CLIP_FRAMES, f"{path} has fewer than {CLIP_FRAMES} frames"
    return tuple(frames)


@pytest.fixture
def pets_clip() -> list[Image]:
    """The first frames of pets2009: the committed cut when present, else the shared set (or skip)."""
    return list(clip_frames(PETS_CUT if PETS_CUT.exists() else shared_set("pets")))


def test_first_frame_is_a_key() -> None:
    decision = KeySelector(settings()).decide(scene(1), 0)
    assert decision == KeyDecision(is_key=True, reason=KeyReason.FIRST, ssim=1.0)


def test_similar_frames_join_the_group_and_report_their_ssim() -> None:
    key = scene(1)
    decisions = run(KeySelector(settings()), [key, jitter(key, 2), jitter(key, 3)])
    assert [d.is_key for d in decisions] == [True, False, False]
    for decision in decisions[1:]:
        assert decision.reason is None
        assert 0.9 < decision.ssim < 1.0


def test_dissimilar_frame_becomes_the_new_key_and_the_reference_follows() -> None:
    first, second = scene(1), scene(2)
    selector = KeySelector(settings(threshold=0.5))
    decisions = run(selector, [first, jitter(first, 5), second, jitter(second, 6), first])
    assert [d.reason for d in decisions] == [
        KeyReason.FIRST,
        None,
        KeyReason.SSIM,
        None,  # compared with the new key, not the first one
        KeyReason.SSIM,
    ]
    expected = SsimReference(first, 1).score(second)
    assert expected < 0.5
    assert decisions[2].ssim == pytest.approx(expected, abs=1e-6), "an SSIM key reports SSIM to the old key"
    assert decisions[3].ssim > 0.9


def test_identical_frame_scores_exactly_one() -> None:
    selector = KeySelector(settings(threshold=1.0))
    image = scene(4)
    decisions = run(selector, [image, image.copy(), jitter(image, 1)])
    assert decisions[1] == KeyDecision(is_key=False, reason=None, ssim=1.0)
    assert decisions[2].reason is KeyReason.SSIM


def test_threshold_zero_never_keys_on_ssim_even_for_a_negative_ssim() -> None:
    image = scene(1)
    decisions = run(KeySelector(settings(threshold=0.0)), [image, 255 - image, scene(9)])
    assert [d.is_key for d in decisions] == [True, False, False]
    assert decisions[1].ssim < 0.0


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_frame_interval_is_respected_exactly(limit: int) -> None:
    image = scene(1)
    decisions = run(KeySelector(settings(threshold=0.0, max_key_interval_frames=limit)), [image] * 22)
    keys = [index for index, decision in enumerate(decisions) if decision.is_key]
    assert keys == list(range(0, 22, limit))
    assert {decisions[index].reason for index in keys[1:]} <= {KeyReason.INTERVAL_FRAMES}


def test_time_interval_counts_from_the_key_capture_time() -> None:
    selector = KeySelector(settings(threshold=0.0, max_key_interval_s=10.0))
    image = scene(1)
    times = [0, 4 * SECOND, 10 * SECOND - 1, 10 * SECOND, 15 * SECOND, 19 * SECOND, 20 * SECOND]
    decisions = [selector.decide(image, t) for t in times]
    assert [d.reason for d in decisions] == [
        KeyReason.FIRST,
        None,
        None,
        KeyReason.INTERVAL_TIME,
        None,
        None,
        KeyReason.INTERVAL_TIME,
    ]


def test_time_interval_zero_disables_it() -> None:
    selector = KeySelector(settings(threshold=0.0, max_key_interval_s=0.0))
    image = scene(1)
    decisions = [selector.decide(image, day * 86_400 * SECOND) for day in range(5)]
    assert [d.is_key for d in decisions] == [True, False, False, False, False]


@pytest.mark.parametrize(
    "changed",
    [
        scene(1, (120, 162, 3)),  # wider
        scene(1, (120, 160)),  # same size, grey
        scene(1, (160, 120, 3)),  # rotated
    ],
)
def test_format_change_forces_a_key_without_ssim(changed: Image) -> None:
    image = scene(1)
    selector = KeySelector(settings(threshold=0.0))
    decisions = run(selector, [image, changed, jitter(changed, 3), image])
    assert [d.reason for d in decisions] == [
        KeyReason.FIRST,
        KeyReason.FORMAT_CHANGE,
        None,
        KeyReason.FORMAT_CHANGE,
    ]
    assert decisions[1].ssim == 1.0
    assert decisions[2].ssim > 0.9, "the new format's frames are compared with the new key"


def test_request_key_applies_to_the_next_frame_only() -> None:
    image = scene(1)
    selector = KeySelector(settings(threshold=0.0, max_key_interval_frames=3))
    assert selector.decide(image, 0).reason is KeyReason.FIRST
    assert not selector.decide(image, 1).is_key
    selector.request_key()
    selector.request_key()
    assert selector.decide(image, 2) == KeyDecision(is_key=True, reason=KeyReason.REQUESTED, ssim=1.0)
    # The requested key started a new group: the frame interval counts from it.
    assert [selector.decide(image, t).reason for t in range(3, 7)] == [
        None,
        None,
        KeyReason.INTERVAL_FRAMES,
        None,
    ]


def test_force_and_request_win_over_format_change_and_are_consumed_by_any_key() -> None:
    image = scene(1)
    selector = KeySelector(settings(threshold=0.0))
    assert selector.decide(image, 0).reason is KeyReason.FIRST
    assert selector.decide(image, 1, force=True).reason is KeyReason.REQUESTED
    assert not selector.decide(image, 2).is_key, "force does not leave a request behind"
    selector.request_key()
    assert selector.decide(scene(1, (60, 80, 3)), 3).reason is KeyReason.REQUESTED
    assert not selector.decide(scene(1, (60, 80, 3)), 4).is_key


def test_request_before_the_first_frame_is_satisfied_by_it() -> None:
    selector = KeySelector(settings(threshold=0.0))
    selector.request_key()
    assert selector.decide(scene(1), 0).reason is KeyReason.FIRST
    assert not selector.decide(scene(1), 1).is_key


def test_small_frames_lower_the_downscale_instead_of_failing() -> None:
    selector = KeySelector(settings(threshold=0.5, ssim_downscale=16))
    image = scene(1, (40, 48, 3))
    decisions = run(selector, [image, jitter(image, 2), scene(2, (40, 48, 3))])
    assert [d.reason for d in decisions] == [KeyReason.FIRST, None, KeyReason.SSIM]


def test_frames_ssim_cannot_use_are_refused() -> None:
    selector = KeySelector(settings())
    with pytest.raises(ValueError, match="smaller than"):
        selector.decide(np.zeros((8, 8), dtype=np.uint8), 0)


def test_real_clip_threshold_zero_gives_no_ssim_keys(pets_clip: list[Image]) -> None:
    decisions = run(KeySelector(settings(threshold=0.0, ssim_downscale=4)), pets_clip)
    assert [d.reason for d in decisions if d.is_key] == [KeyReason.FIRST]
    assert all(0.5 < d.ssim <= 1.0 for d in decisions)


def test_real_clip_threshold_one_keys_nearly_every_frame(pets_clip: list[Image]) -> None:
    decisions = run(KeySelector(settings(threshold=1.0, ssim_downscale=4)), pets_clip)
    keys = sum(d.is_key for d in decisions)
    assert keys >= 0.95 * len(pets_clip)
    assert all(d.reason in (KeyReason.FIRST, KeyReason.SSIM) for d in decisions if d.is_key)


def test_real_clip_members_are_scored_against_their_own_key(pets_clip: list[Image]) -> None:
    """With a mid threshold both outcomes occur; recompute every score from scratch to check the cache."""
    group_limit = 25
    first_group = [SsimReference(pets_clip[0], 4).score(frame) for frame in pets_clip[1:group_limit]]
    threshold = (min(first_group) + max(first_group)) / 2  # some frame of the first group falls below it
    selector = KeySelector(
        settings(threshold=threshold, ssim_downscale=4, max_key_interval_frames=group_limit)
    )
    decisions = run(selector, pets_clip)
    assert KeyReason.SSIM in {d.reason for d in decisions}
    assert None in {d.reason for d in decisions}
    key = pets_clip[0]
    group = 0
    for frame, decision in zip(pets_clip, decisions, strict=True):
        if decision.is_key:
            if decision.reason is KeyReason.SSIM:
                expected = SsimReference(key, 4).score(frame)
                assert decision.ssim == pytest.approx(expected, abs=1e-6)
                assert decision.ssim < threshold
            else:
                assert decision.reason in (KeyReason.FIRST, KeyReason.INTERVAL_FRAMES)
                assert decision.ssim == 1.0
            key, group = frame, 1
            continue
        group += 1
        assert group <= group_limit
        assert decision.ssim == pytest.approx(SsimReference(key, 4).score(frame), abs=1e-6)
        assert decision.ssim >= threshold
