"""benchmarks/compare.py: the speed column's two methods run in turn, each keeping its fastest round."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.capture import ffmpeg
from benchmarks import compare
from benchmarks.seed_method import MethodResult
from tests.fixtures.calls import record_calls


def _result(method: str, encode_s: float | None) -> MethodResult:
    return MethodResult(method, 10, 1000, 100, encode_s, 0)


def test_fastest_of_runs_the_methods_in_turn_and_keeps_each_ones_fastest_run() -> None:
    results = [_result("ours", 0.5), _result("other", 9.0), _result("seed", 4.0)]
    order: list[str] = []
    times = {"ours": iter([0.7, 0.3]), "seed": iter([3.0, 3.5])}

    def again(method: str) -> MethodResult:
        order.append(method)
        return _result(method, next(times[method]))

    compare.fastest_of(results, {"ours": lambda: again("ours"), "seed": lambda: again("seed")}, rounds=3)
    assert order == ["ours", "seed", "ours", "seed"]
    assert [r.encode_s for r in results] == [0.3, 9.0, 3.0]
    compare.fastest_of(results, {"ours": lambda: again("ours")}, rounds=1)  # one round: nothing runs again
    assert order == ["ours", "seed", "ours", "seed"]


@pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")
def test_compare_times_ours_and_the_seed_rounds_times(
    pets_cut: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_calls(monkeypatch, compare, ("run_ours", "run_seed"))
    monkeypatch.setattr(compare, "run_peers", lambda *args, **kwargs: [])
    run = compare.compare(pets_cut, 4, 0, None, rounds=2)
    # ours (lossless, then zstd, then frames), the seed (lossy, then exact), then one more round of the two.
    assert calls == ["run_ours"] * 3 + ["run_seed"] * 2 + ["run_ours", "run_seed"]
    assert [r.method for r in run.results][:2] == ["ours (lossless)", "ours (lossless, zstd)"]
    assert all(r.encode_s is not None and r.encode_s > 0 for r in run.results)
