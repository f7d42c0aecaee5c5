"""benchmarks/paired_speed.py runs both methods in turn on the same frames and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.capture import ffmpeg
from benchmarks import paired_speed
from tests.fixtures.calls import record_calls


@pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")
def test_paired_speed_alternates_the_two_methods_and_reports_each_round(
    pets_cut: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    order = record_calls(monkeypatch, paired_speed, ("run_ours", "run_seed"))
    assert paired_speed.main([str(pets_cut), "--frames", "6", "--rounds", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert order == ["run_ours", "run_seed", "run_ours", "run_seed"]
    assert report["frames"] == 6
    assert report["size"] == "768x576"
    assert report["pictures"] is True  # the agent's default: the ffmpeg child's pictures coded
    assert len(report["ours_ms"]) == len(report["seed_ms"]) == 2
    assert report["speed_best"] == pytest.approx(min(report["seed_ms"]) / min(report["ours_ms"]))
    assert all(ms > 0 for ms in report["ours_ms"] + report["seed_ms"])
    with pytest.raises(SystemExit):
        paired_speed.main([str(pets_cut), "--rounds", "0"])
