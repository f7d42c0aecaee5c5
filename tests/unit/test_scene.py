"""The simulated scene is deterministic, moves, changes light and shows its clock; its camera paces itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from agent.capture.simulated import SimulatedSource
from agent.errors import CaptureError
from agent.simulate.scene import Scene, SceneSettings

SMALL = SceneSettings(seed=5, width=320, height=180, fps=10.0)
STILL = SceneSettings(seed=5, width=320, height=180, fps=10.0, clock=False, noise=0.0, day_length_s=0.0)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def test_same_seed_and_index_give_identical_frames() -> None:
    a, b = Scene(SMALL), Scene(SMALL)
    for i in (0, 1, 17, 1234):
        fa = a.frame(i)
        assert fa.dtype == np.uint8
        assert fa.shape == (180, 320, 3)
        assert fa.flags.c_contiguous
        assert np.array_equal(fa, b.frame(i))
        assert np.array_equal(fa, a.frame(i)), "frame(i) must not depend on what was asked before"


def test_different_index_or_seed_differs() -> None:
    scene = Scene(SMALL)
    assert not np.array_equal(scene.frame(3), scene.frame(4))
    other = Scene(SceneSettings(seed=6, width=320, height=180))
    assert not np.array_equal(scene.frame(3), other.frame(3))


def test_frames_are_new_arrays_the_caller_may_modify() -> None:
    scene = Scene(SMALL)
    first = scene.frame(2)
    first[:] = 0
    assert scene.frame(2).any()


def test_moving_objects_move_on_a_still_background() -> None:
    scene = Scene(STILL)
    d = _diff(scene.frame(0), scene.frame(10)).max(axis=2)
    sky = d[: 180 // 10]  # top rows: only the slow lighting drift touches them
    road = d[int(180 * 0.58) :]
    assert sky.max() <= 12, "the static background changed more than lighting drift explains"
    assert (road > 60).sum() > 200, "no object moved along the road in one second"


def test_day_night_cycle_darkens_and_comes_back() -> None:
    settings = SceneSettings(
        seed=5, width=320, height=180, fps=10.0, clock=False, noise=0.0, day_length_s=60.0
    )
    scene = Scene(settings)
    noon, midnight, next_noon = (scene.frame(i).mean() for i in (0, 300, 600))
    assert midnight < 0.5 * noon
    assert abs(next_noon - noon) < 0.1 * noon


def test_clock_is_burned_in_top_left_and_changes_every_second() -> None:
    with_clock = Scene(SceneSettings(seed=5, width=320, height=180, clock=True, noise=0.0))
    without = Scene(SceneSettings(seed=5, width=320, height=180, clock=False, noise=0.0))
    marks = [_diff(with_clock.frame(i), without.frame(i)).max(axis=2) > 0 for i in (0, 10)]
    for mark in marks:
        ys, xs = np.nonzero(mark)
        assert ys.size > 50
        assert ys.max() < 180 // 4, "clock text below the top-left corner"
        assert xs.max() < 320 * 3 // 4, "clock text right of the top-left corner"
    assert (marks[0] != marks[1]).sum() > 10, "the clock text did not change between t=0 s and t=1 s"


def test_noise_has_the_configured_strength_and_changes_per_frame() -> None:
    noisy = Scene(SceneSettings(seed=5, width=320, height=180, clock=False, noise=2.0))
    clean = Scene(SceneSettings(seed=5, width=320, height=180, clock=False, noise=0.0))
    residual = [noisy.frame(i).astype(np.int16) - clean.frame(i).astype(np.int16) for i in (0, 1)]
    assert 1.5 < residual[0].std() < 2.5
    assert not np.array_equal(residual[0], residual[1])


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 8}, {"fps": 0.0}, {"fps": float("nan")}, {"noise": -1.0}, {"day_length_s": -5.0}],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="scene"):
        SceneSettings(**kwargs)  # type: ignore[arg-type]


def test_negative_index_is_refused() -> None:
    with pytest.raises(ValueError, match="index"):
        Scene(SMALL).frame(-1)


def test_full_hd_speed_is_measured(record_property: Callable[[str, object], None]) -> None:
    scene = Scene(SceneSettings(width=1280, height=720))
    scene.frame(0)
    start = time.perf_counter()
    for i in range(1, 31):
        scene.frame(i * 7)
    ms = (time.perf_counter() - start) / 30 * 1000
    record_property("scene_ms_per_1280x720_frame", round(ms, 2))


def test_simulated_source_without_pacing_returns_every_frame_then_ends() -> None:
    scene = Scene(SMALL)
    with SimulatedSource(SMALL, realtime=False, max_frames=4) as source:
        frames = [source.read() for _ in range(5)]
    assert frames[-1] is None
    got = [f for f in frames if f is not None]
    assert [f.source_index for f in got] == [0, 1, 2, 3]
    for f in got:
        assert np.array_equal(f.image, scene.frame(f.source_index))
        assert abs(f.wall_time_ns - time.time_ns()) < 5e9


def test_simulated_source_in_real_time_skips_frames_for_a_slow_consumer() -> None:
    with SimulatedSource(SceneSettings(width=160, height=90, fps=20.0)) as source:
        first = source.read()
        time.sleep(0.5)
        later = source.read()
    assert first is not None
    assert later is not None
    assert first.source_index == 0
    assert later.source_index >= 9, "a slow consumer got a stale frame instead of the current one"


@pytest.mark.parametrize("wake", ["close", "interrupt"])
def test_simulated_source_close_wakes_a_paced_read_within_a_second(wake: str) -> None:
    source = SimulatedSource(SceneSettings(width=160, height=90, fps=0.1))
    source.open()
    assert source.read() is not None  # frame 0 is due at once; frame 1 only after 10 s
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(source.read()))
    reader.start()
    time.sleep(0.2)
    start = time.monotonic()
    getattr(source, wake)()
    reader.join(2.0)
    assert not reader.is_alive()
    assert time.monotonic() - start < 1.2
    assert result == [None]


def test_simulated_source_must_be_opened() -> None:
    with pytest.raises(CaptureError, match="not open"):
        SimulatedSource(SMALL).read()
