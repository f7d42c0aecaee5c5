"""Compare our codec with the seed article's method and standard lossless codecs on real footage.

    .venv/bin/python benchmarks/compare.py SOURCE [--frames N] [--tolerance T] [--rounds R] [--json]
    .venv/bin/python benchmarks/compare.py --all [--json]

SOURCE is a video file or a folder of stills. Frames are decoded once and every method gets the same ones.
Ratio is raw BGR bytes over encoded bytes; "max err" is the largest absolute pixel difference between what
each method gives back and the decoded frame (0 = lossless, measured, not assumed). Every method runs in this
one process under the agent's process settings (``agent/process.py``: one OpenCV thread, fixed malloc
thresholds), so speeds compare like for like; ``--process-defaults`` keeps the library defaults instead.
The speed column's two methods, ours (lossless) and the seed's, run ``--rounds`` times (default 3), in turn,
and each keeps its fastest round: on these shared machines one run of the 320x240 clip took 0.33-0.60 ms a
frame within minutes, and a slow minute only ever adds time. The other rows run once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.capture.files import VideoFileSource, iter_images  # noqa: E402
from benchmarks.peers import run_peers  # noqa: E402
from benchmarks.seed_method import Image, MethodResult, run_seed  # noqa: E402

SHARED_DATA = Path(os.environ.get("CCTV_SHARED_DATA", REPO.parent / "shared" / "data"))
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm")
DEFAULT_VIDEO_FRAMES = 150
X264_LIMIT_PIXELS = 1920 * 1080
"""Frames this large get x264 veryslow on the first ``--x264-limit`` frames only (~1 s a frame on 2 cores)."""


def run_ours(
    frames: Sequence[Image],
    tolerance: int = 0,
    fps: float = 10.0,
    entropy: str = "auto",
    jpeg_chroma: bool = False,
    pictures: Sequence[bytes | None] | None = None,
    frames_row: bool = False,
) -> MethodResult:
    """Our encoder, one thread; each record is packed to wire bytes, parsed back and decoded to check it.

    ``entropy`` is the codec setting: "auto" (CTX with the compiled coder, the default) or "zstd" (faster);
    ``jpeg_chroma`` the setting for stills decoded from JPEGs (off by default). ``pictures``: each frame's
    yuv420p picture, as the agent's ffmpeg child hands them out, which the codec codes instead (the ``yuv``
    setting); None codes the frames, as where video is decoded by OpenCV (``frames_row`` says so in the name).
    """
    name = "ours (lossless)" if tolerance == 0 else f"ours (tolerance {tolerance})"
    if entropy != "auto":
        name = name[:-1] + f", {entropy})"
    if jpeg_chroma:
        name = name[:-1] + ", jpeg_chroma)"
    if frames_row:
        name = name[:-1] + ", frames)"
    raw = sum(f.nbytes for f in frames)
    try:
        from agent.codec.decoder import FrameDecoder
        from agent.codec.encoder import FrameEncoder
        from agent.codec.settings import CodecSettings
        from agent.codec.wire import Kind, pack_record, unpack_record
    except ImportError as e:
        return MethodResult(name, len(frames), raw, None, None, None, note=f"n/a: codec not importable ({e})")
    settings = CodecSettings(tolerance=tolerance, entropy=entropy, jpeg_chroma=jpeg_chroma)  # type: ignore[arg-type]
    encoder = FrameEncoder("bench", settings)
    decoder = FrameDecoder()
    step_ns = int(1e9 / fps) if fps > 0 else 100_000_000
    t0 = time.time_ns()
    encoded = 0
    encode_s = 0.0
    max_err = 0
    keys = 0
    for i, image in enumerate(frames):
        picture = None if pictures is None else pictures[i]
        start = time.perf_counter()
        record = encoder.encode(image, t0 + i * step_ns, picture=picture)
        data = pack_record(record)
        encode_s += time.perf_counter() - start
        encoded += len(data)
        keys += record.header.kind == Kind.KEY
        rebuilt = decoder.decode(unpack_record(data))
        max_err = max(max_err, int(np.max(np.abs(rebuilt.astype(np.int16) - image.astype(np.int16)))))
    return MethodResult(name, len(frames), raw, encoded, encode_s, max_err, keys=keys, note="1 thread")


def load(source: Path, frames: int | None) -> tuple[list[Image], list[bytes] | None, float]:
    """Decode the frames once (default: 150 of a video, all of a folder), each video frame's yuv420p picture
    where the ffmpeg child decoded it (else None), and the rate to feed ffmpeg."""
    if source.is_dir():
        return list(iter_images(source, limit=frames)), None, 10.0
    limit = DEFAULT_VIDEO_FRAMES if frames is None else frames
    images: list[Image] = []
    pictures: list[bytes | None] = []
    video = VideoFileSource(source)
    with video:
        fps = video.fps or 10.0
        while len(images) < limit and (frame := video.read()) is not None:
            images.append(frame.image)
            pictures.append(frame.picture)
    known = [p for p in pictures if p is not None]
    return images, known if len(known) == len(images) else None, fps


@dataclass
class SetRun:
    """All methods on one source."""

    source: str
    set: str
    frames: int
    size: str
    results: list[MethodResult]
    wall_s: float

    def as_json(self) -> dict[str, object]:
        results = [asdict(r) | {"ratio": r.ratio, "ms_per_frame": r.ms_per_frame} for r in self.results]
        return asdict(self) | {"results": results}


def compare(
    source: Path, frames: int | None, tolerance: int, x264_limit: int | None, rounds: int = 1
) -> SetRun:
    start = time.perf_counter()
    images, pictures, fps = load(source, frames)
    if not images:
        raise SystemExit(f"{source}: no frames")
    height, width = images[0].shape[:2]
    if x264_limit is None and height * width >= X264_LIMIT_PIXELS:
        x264_limit = 40
    results = [
        run_ours(images, 0, fps, pictures=pictures),
        run_ours(images, 0, fps, "zstd", pictures=pictures),
    ]
    if pictures is not None:  # the frames coded as OpenCV hands them out, for comparison
        results.append(run_ours(images, 0, fps, frames_row=True))
    if source.is_dir() and images[0].ndim == 3:  # stills: the setting for JPEG snapshots
        results.append(run_ours(images, 0, fps, jpeg_chroma=True))
    if tolerance:
        results.append(run_ours(images, tolerance, fps, pictures=pictures))
        if pictures is not None:
            results.append(run_ours(images, tolerance, fps, frames_row=True))
    seed = run_seed(images)
    results += [seed, run_seed(images, exact=True)]
    again = {  # the speed column's two methods
        results[0].method: lambda: run_ours(images, 0, fps, pictures=pictures),
        seed.method: lambda: run_seed(images),
    }
    fastest_of(results, again, rounds)
    results += run_peers(images, fps, x264_limit=x264_limit)
    size = f"{width}x{height}" + (" grey" if images[0].ndim == 2 else "")
    return SetRun(str(source), source.parent.name, len(images), size, results, time.perf_counter() - start)


def fastest_of(
    results: list[MethodResult], again: dict[str, Callable[[], MethodResult]], rounds: int
) -> None:
    """Run each method of ``again`` (named as in ``results``, which holds its first run) until it has run
    ``rounds`` times, the methods in turn, and keep in ``results`` each one's fastest run."""
    for _ in range(rounds - 1):
        for method, run in again.items():
            index = next(i for i, r in enumerate(results) if r.method == method)
            repeat = run()
            best = results[index]
            if repeat.encode_s is not None and (best.encode_s is None or repeat.encode_s < best.encode_s):
                results[index] = repeat


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB (Linux reports KiB). It holds every frame of the set."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(value: float | int | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _lossless(max_abs_error: int | None) -> str:
    if max_abs_error is None:
        return "n/a"
    return "yes (0)" if max_abs_error == 0 else f"NO ({max_abs_error})"


def _rows(results: Sequence[MethodResult]) -> list[list[str]]:
    return [
        [
            r.method,
            _fmt(r.ratio, ".2f"),
            _fmt(r.ms_per_frame, ".1f"),
            _lossless(r.max_abs_error),
            _fmt(r.keys, "d"),
            r.note,
        ]
        for r in results
    ]


HEADER = ["method", "ratio", "ms/frame", "lossless? (max err)", "keys", "note"]


def text_table(run: SetRun) -> str:
    rows = [HEADER, *_rows(run.results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [f"{run.source}: {run.frames} frames {run.size}, all methods {run.wall_s:.0f} s wall"]
    for n, row in enumerate(rows):
        cells = (
            c.ljust(w) if i in (0, 5) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(runs: Sequence[SetRun]) -> str:
    lines = ["| set | frames | " + " | ".join(HEADER) + " |", "|" + " --- |" * (len(HEADER) + 2)]
    for run in runs:
        prefix = f"| {run.set} | {run.frames} ({run.size}) | "
        lines.extend(prefix + " | ".join(row) + " |" for row in _rows(run.results))
    return "\n".join(lines)


def shared_sets(root: Path = SHARED_DATA) -> list[Path]:
    """Each public set's footage: a ``frames`` folder of stills, or the folder's one video file."""
    sets = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / "frames").is_dir():
            sets.append(folder / "frames")
        else:
            sets.extend(sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS))
    return sets


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads``, for every script that times our encoder against the seed's."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="planes the codec's extension codes at once (default 1: the speed target is per core, and the seed's "
        "method runs on one; the agent uses the CPUs it may run on, agent.codec.native.THREADS)",
    )


def use_threads(threads: int) -> None:
    """Our encoder codes ``threads`` planes at once from now on in this process."""
    from agent.codec import native

    native.THREADS = threads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", nargs="?", type=Path, help="video file or folder of stills")
    parser.add_argument("--all", action="store_true", help=f"every set under {SHARED_DATA}")
    parser.add_argument("--frames", type=int, help="first N frames (default: 150 of a video, all stills)")
    parser.add_argument(
        "--tolerance", type=int, default=0, help="also run ours with this per-pixel tolerance"
    )
    parser.add_argument(
        "--x264-limit", type=int, help="feed x264 only the first N frames (default: 40 at 1080p)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of ours (lossless) and the seed's method, in turn, each keeping its fastest (default 3)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--process-defaults",
        action="store_true",
        help="keep glibc's and OpenCV's defaults instead of the agent's process settings (agent/process.py); "
        "the seed's method then spends up to half its time on page faults, varying with what ran before",
    )
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.all == (args.source is not None):
        parser.error("give either SOURCE or --all")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.process_defaults:
        # Every method runs under the settings the agent runs with, so each gets the same allocator.
        from agent import process

        process.configure()
    use_threads(args.threads)
    sources = shared_sets() if args.all else [args.source]
    runs = []
    for source in sources:
        run = compare(source, args.frames, args.tolerance, args.x264_limit, args.rounds)
        runs.append(run)
        if not args.json:
            print(text_table(run) + "\n", flush=True)
    peak = peak_rss_mib()
    if args.json:
        report = {"runs": [r.as_json() for r in runs], "peak_rss_mib": peak}
        print(json.dumps(report, indent=2))
        return 0
    print(f"peak RSS of this process (it holds all frames of a set at once): {peak:.0f} MiB")
    if args.all:
        print("\n" + markdown_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
