"""How far `tolerance = 2` can get on a video's pictures with its chroma exact: two ceilings, from the exact stream.

    .venv/bin/python benchmarks/luma_bound.py [VIDEO ...] [--frames N] [--tolerance T]

With no VIDEO it runs the public videos under ``$CCTV_SHARED_DATA`` (default ``../shared/data``).

Why: issue 2 asks T = 2 for twice the lossless ratio. On pictures (stage YUV420) only Y can move at T <= 2 (one
U or V level moves B or R by 2-3 levels), on a lattice of step S(T) (4 at T = 2), which takes at most
log2(S) bits of information from a sample. This codes each video exactly, as the agent does, keeps the planes
its CTX stage coded, and costs every sample under a static model of CTX's contexts (the activity of its
coded neighbours, the same 16 classes; each class's own histogram). Then, with the chroma rows as they are:

- per sample: each Y sample saves the lesser of its cost and log2(S) bits. Not a proof (a quantiser may save a
  rare sample more than log2(S) bits), but what a Y quantiser saves sample by sample;
- per context: the Y samples of a context class save the lesser of their mean cost and log2(S) bits each (a
  class's entropy drops by at most log2(S) a sample): looser, and closer to a proof (it ignores that
  quantising changes the classes).

It prints, per video, the exact stream's model size (its Y and chroma parts), both ceilings as ratios to it,
and the codec's own T = 2 ratio to its exact one (``compare.py`` measures the same).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from agent.codec import pipeline  # noqa: E402
from agent.codec.encoder import FrameEncoder  # noqa: E402
from agent.codec.settings import CodecSettings  # noqa: E402
from agent.codec.wire import luma_step, pack_record  # noqa: E402
from benchmarks.compare import load, shared_sets  # noqa: E402

ACT_THRESHOLDS = np.array([1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128])
"""CTX's activity classes (``_native.c``): a context is the number of these its activity reaches."""
CENTRE_ROW_STEP = 8


@dataclass
class Bound:
    video: str
    frames: int
    exact_y_bits: float
    exact_chroma_bits: float
    per_sample_bits: float
    per_context_bits: float
    codec_gain: float
    """The codec's own T ratio over its exact ratio (records, headers included)."""

    @property
    def exact_bits(self) -> float:
        return self.exact_y_bits + self.exact_chroma_bits


def sample_costs(plane: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """Each sample's cost in bits under a static model of CTX's contexts, and its context class."""
    values, counts = np.unique(plane[::CENTRE_ROW_STEP], return_counts=True)
    symbols = (plane.astype(np.int16) - int(values[np.argmax(counts)])) % 256
    magnitude = np.where(symbols < 128, symbols, 256 - symbols).astype(np.int32)
    m = np.pad(magnitude, ((1, 0), (1, 1)))
    activity = 2 * m[1:, :-2] + 2 * m[:-1, 1:-1] + m[:-1, :-2] + m[:-1, 2:]
    context = np.searchsorted(ACT_THRESHOLDS, activity, side="right")
    cost = np.zeros(plane.shape)
    for c in np.unique(context):
        inside = context == c
        symbol = symbols[inside]
        cost[inside] = -np.log2(np.bincount(symbol, minlength=256)[symbol] / symbol.size)
    return cost, context


def coded_planes(
    images: list[npt.NDArray[np.uint8]], pictures: Sequence[bytes | None]
) -> list[npt.NDArray[np.uint8]]:
    """The planes the exact codec hands its CTX stage, frame by frame (the agent's defaults)."""
    planes: list[npt.NDArray[np.uint8]] = []
    original = pipeline.native.ctx_encode

    def keep(data: npt.NDArray[np.uint8]) -> bytes:
        planes.append(np.array(data[0]))
        return original(data)

    pipeline.native.ctx_encode = keep
    try:
        encoder = FrameEncoder("bound", CodecSettings())
        for i, image in enumerate(images):
            encoder.encode(image, i * 100_000_000, picture=pictures[i])
    finally:
        pipeline.native.ctx_encode = original
    return planes


def codec_ratio(
    images: list[npt.NDArray[np.uint8]], pictures: Sequence[bytes | None], tolerance: int
) -> float:
    encoder = FrameEncoder("bound", CodecSettings(tolerance=tolerance))
    coded = sum(
        len(pack_record(encoder.encode(image, i * 100_000_000, picture=pictures[i])))
        for i, image in enumerate(images)
    )
    return sum(image.nbytes for image in images) / coded


def bound(video: Path, frames: int | None, tolerance: int) -> Bound:
    images, pictures, _fps = load(video, frames)
    if pictures is None:
        raise SystemExit(f"{video}: no yuv420p pictures (needs ffmpeg, and limited-range yuv420p video)")
    saved = math.log2(luma_step(tolerance))
    y_bits = chroma_bits = per_sample = per_context = 0.0
    for plane in coded_planes(images, pictures):
        cost, context = sample_costs(plane)
        rows = plane.shape[0] * 2 // 3  # YUV420's plane: Y's rows, then the chroma rows
        y, y_context = cost[:rows], context[:rows]
        y_bits += float(y.sum())
        chroma_bits += float(cost[rows:].sum())
        per_sample += float(np.maximum(0.0, y - saved).sum())
        for c in np.unique(y_context):
            inside = y_context == c
            per_context += max(0.0, float(y[inside].mean()) - saved) * int(inside.sum())
    gain = codec_ratio(images, pictures, tolerance) / codec_ratio(images, pictures, 0)
    return Bound(
        str(video),
        len(images),
        y_bits,
        chroma_bits,
        per_sample + chroma_bits,
        per_context + chroma_bits,
        gain,
    )


def video_arguments(description: str, argv: Sequence[str] | None) -> tuple[list[Path], int | None, int]:
    """The videos (default: the public ones), ``--frames`` and ``--tolerance`` of a script that weighs T on
    videos' pictures (this one, ``picture_tolerance.py``)."""
    parser = argparse.ArgumentParser(description=description.split("\n", 1)[0])
    parser.add_argument("videos", nargs="*", type=Path, help="video files (default: the public videos)")
    parser.add_argument("--frames", type=int, default=None, help="frames of each (default: 150)")
    parser.add_argument("--tolerance", type=int, default=2, help="T (default 2)")
    args = parser.parse_args(argv)
    if args.tolerance < 1:
        parser.error("--tolerance must be at least 1")
    return args.videos or [s for s in shared_sets() if s.is_file()], args.frames, args.tolerance


def main(argv: Sequence[str] | None = None) -> int:
    videos, frames, tolerance = video_arguments(__doc__, argv)
    for video in videos:
        b = bound(video, frames, tolerance)
        print(
            f"{Path(b.video).name}: {b.frames} frames; exact, modelled: {b.exact_bits / 8e6:.3f} MB "
            f"(Y {b.exact_y_bits / 8e6:.3f}, chroma {b.exact_chroma_bits / 8e6:.3f}); T = {tolerance} "
            f"at best {b.exact_bits / b.per_sample_bits:.2f}x the exact stream per sample, "
            f"{b.exact_bits / b.per_context_bits:.2f}x per context; the codec: {b.codec_gain:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
