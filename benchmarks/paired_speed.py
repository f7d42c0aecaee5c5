"""Our encoder's speed against the seed's method, paired: both run in turn, several rounds, in one process.

    .venv/bin/python benchmarks/paired_speed.py SOURCE [--frames N] [--rounds R] [--json]

Why beside ``compare.py``: these machines are shared, and a set's speed ratio moved by half between runs of
the whole table (the 320x240 clip, after the 1080p stills in the same process: 6.0x; alone: 9.0-9.6x, the
twelfth session). Here the two methods alternate on the same frames, ``--rounds`` times (default 4), and the
best and the median round of each are compared, so a slow minute costs both. Ours is the default codec as the
agent runs it (the pictures coded where the ffmpeg child decodes), timed as in ``compare.py``: the SSIM
decision, the encode and packing each record; the seed's: its SSIM, subtraction and TIFF writing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from agent import process  # noqa: E402
from benchmarks.compare import add_threads_option, load, run_ours, use_threads  # noqa: E402
from benchmarks.seed_method import run_seed  # noqa: E402


@dataclass
class PairedRun:
    """ms a frame of each round of both methods, in the order they ran."""

    source: str
    frames: int
    size: str
    pictures: bool
    ours_ms: list[float]
    seed_ms: list[float]

    @property
    def speed_best(self) -> float:
        return min(self.seed_ms) / min(self.ours_ms)

    @property
    def speed_median(self) -> float:
        return statistics.median(self.seed_ms) / statistics.median(self.ours_ms)


def paired(source: Path, frames: int | None, rounds: int) -> PairedRun:
    """Ours and the seed's, alternating, ``rounds`` times each on the same frames."""
    images, pictures, _fps = load(source, frames)
    size = f"{images[0].shape[1]}x{images[0].shape[0]}"
    run = PairedRun(str(source), len(images), size, pictures is not None, [], [])
    for _ in range(rounds):
        for runs, result in (
            (run.ours_ms, run_ours(images, pictures=pictures)),
            (run.seed_ms, run_seed(images)),
        ):
            assert result.ms_per_frame is not None, result.note
            runs.append(result.ms_per_frame)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", type=Path, help="a video file or a folder of stills")
    parser.add_argument("--frames", type=int, default=None, help="frames to use (default: 150 of a video)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both methods (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    process.configure()
    use_threads(args.threads)
    run = paired(args.source, args.frames, args.rounds)
    if args.json:
        print(
            json.dumps(
                {**asdict(run), "speed_best": run.speed_best, "speed_median": run.speed_median}, indent=2
            )
        )
        return 0
    print(f"{run.source}: {run.frames} frames, {run.size}, pictures coded: {run.pictures}")
    print(f"ours ms/frame: {' '.join(f'{v:.3f}' for v in run.ours_ms)}")
    print(f"seed ms/frame: {' '.join(f'{v:.3f}' for v in run.seed_ms)}")
    print(f"speed vs seed: best {run.speed_best:.2f}x, median {run.speed_median:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
