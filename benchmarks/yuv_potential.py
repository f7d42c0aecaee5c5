"""What coding decoded video's YUV 4:2:0 planes, instead of the BGR frames converted from them, could save.

(The eleventh session's estimate; the twelfth built it as stage YUV420, which ``cctv-agent bench`` and
``benchmarks/compare.py`` measure: docs/benchmarks.md.)

    .venv/bin/python benchmarks/yuv_potential.py [VIDEO ...] [--frames N]

With no VIDEO it runs the public videos under ``$CCTV_SHARED_DATA`` (default ``../shared/data``).

A video source's frames are ``agent.codec.yuv.to_bgr`` of the pictures an ffmpeg child decodes: a function of
(Y, U, V), so a record that carried the planes would rebuild the BGR frame bit for bit, with 1.5 samples a pixel
instead of 3 and without the conversion's 1.164 luma gain and 2.4 chroma gains. This prints, per video, the
default codec on the BGR frames (``compare.run_ours``: whole records, decoded again and checked) beside a rough
CTX cost of the planes: the first frame MED-predicted, every later one as its mod-256 difference from the one
before (Y, and U with V, each the cheaper of plain and MED), plus 64 bytes a frame for a header. No recipe
search, no group layout for the planes: a floor for the gain, not a ceiling.

It also prints the share of pixels with a channel at 0 or 255. Where none of a 2×2 block's pixels is free of
clipping, the planes cannot be read back off the BGR frame without a search (several (U, V) give the same
pixels), which is why a codec stage would rather take the planes from the capture than recover them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.capture import ffmpeg  # noqa: E402
from agent.codec import native, yuv  # noqa: E402
from benchmarks.compare import run_ours, shared_sets  # noqa: E402

HEADER_BYTES = 64


def pictures(video: Path, frames: int) -> tuple[int, int, list[bytes]]:
    """The first yuv420p pictures of ``video`` as the ffmpeg child decodes them."""
    info = ffmpeg.probe(str(video), [], 30.0)
    why = ffmpeg.unsuitable(info)
    if why is not None:
        raise SystemExit(f"{video}: {why}")
    command = ["ffmpeg", "-v", "error", "-i", str(video), "-map", "0:v:0", "-frames:v", str(frames)]
    command += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    size = yuv.picture_bytes(info.width, info.height)
    return info.width, info.height, [raw[i : i + size] for i in range(0, len(raw) - size + 1, size)]


def planes_cost(width: int, height: int, pics: list[bytes]) -> int:
    """CTX bytes of the planes: MED on the first picture, the cheaper of plain and MED differences after."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    total, previous = 0, None
    for picture in pics:
        flat = np.frombuffer(picture, dtype=np.uint8)
        groups = (flat[: width * height].reshape(1, height, width), flat[width * height :].reshape(2, ch, cw))
        for i, plane in enumerate(groups):
            if previous is None:
                total += len(native.ctx_encode(native.med(plane, (False,) * len(plane))))
                continue
            diff = (plane.astype(np.int16) - previous[i]).astype(np.uint8)
            med = native.med(diff, (True,) * len(plane))
            total += min(len(native.ctx_encode(diff)), len(native.ctx_encode(med)))
        total += HEADER_BYTES
        previous = groups
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", type=Path, nargs="*", help="video files (default: the public videos)")
    parser.add_argument("--frames", type=int, default=150, help="first N frames (default: 150)")
    args = parser.parse_args()
    if not native.AVAILABLE or not ffmpeg.available():
        raise SystemExit("needs the compiled codec and ffmpeg")
    videos = args.videos or [p for p in shared_sets() if p.is_file()]
    for video in videos:
        width, height, pics = pictures(video, args.frames)
        frames = [yuv.to_bgr(p, width, height) for p in pics]
        raw = sum(f.nbytes for f in frames)
        ours = run_ours(frames)
        clipped = np.mean(
            [((f == 0) | (f == 255)).any(axis=2).mean() for f in frames[:: max(1, len(frames) // 10)]]
        )
        print(
            f"{video.name}: {len(frames)} frames {width}x{height}; the codec on BGR {ours.ratio:.2f}x "
            f"(max error {ours.max_abs_error}); YUV planes {raw / planes_cost(width, height, pics):.2f}x; "
            f"pixels with a channel clipped {clipped:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
