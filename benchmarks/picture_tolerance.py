"""What `tolerance = T` reaches on a video's pictures as it is defined, with its chroma free, and defined otherwise.

    .venv/bin/python benchmarks/picture_tolerance.py [VIDEO ...] [--frames N] [--tolerance T]

With no VIDEO it runs the public videos under ``$CCTV_SHARED_DATA`` (default ``../shared/data``).

Why: issue 2 asks T = 2 for twice the lossless ratio, and the codec gets 1.53-1.68x. A tolerance bounds the
error of every B, G and R sample of the frame the camera's picture converts to, so only Y can move at T <= 2
(one U or V level moves B or R by 2-3 levels) and the chroma is coded exactly. ``luma_bound.py`` bounds what a
better Y quantiser could do with the chroma as it is; this measures the two other ways out, so that the target
can be decided on figures:

- **chroma free**: Y on its lattice as the codec puts it, and the chroma costing nothing at all. A ceiling of
  any treatment of the chroma under today's definition that leaves Y's codes as they are (moving U or V by a
  level takes most of Y's room, so a real one would cost Y more);
- **picture samples within T**: the tolerance redefined to bound the error of the decoded picture's own Y, U
  and V samples (every one on steps of 2T + 1, as RESIDUAL_Q does), not the BGR frame's. What the BGR error
  then grows to is printed beside it.

Every column codes the same chain the same way: each frame's residual against the previous frame's
reconstruction (the first frame is the chain's start and is not counted), with and without MED, the cheaper
costed by the CTX coder (``native.ctx_cost``), as the codec's members are. So the columns compare with each
other; the codec's own T ratio over its exact one (records, keys and headers included) is printed too, and
"Y on its lattice" tracks it within a few per cent.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

from agent.codec import native, yuv  # noqa: E402
from agent.codec.pipeline import pixel_stages  # noqa: E402
from agent.codec.wire import Stage  # noqa: E402
from benchmarks.compare import load  # noqa: E402
from benchmarks.luma_bound import codec_ratio, video_arguments  # noqa: E402

Planes = npt.NDArray[np.uint8]


@dataclass
class Outcome:
    video: str
    frames: int
    exact: float
    """Bytes of the exact residuals (the chain's frames after the first, costed)."""
    lattice: float
    """Y on its lattice (RESIDUAL_QY), the chroma exact: what the codec does."""
    chroma_free: float
    """The same chain's Y codes alone."""
    picture: float
    """Every picture sample on steps of 2T + 1."""
    picture_error: int
    """The largest error of a picture sample under ``picture`` (at most T)."""
    bgr_error: int
    """The largest error of a B, G or R sample of the frames those pictures convert to."""
    codec_gain: float


def _cheaper(
    planes: Planes, stages: tuple[Stage, ...], reference: Planes, tolerance: int
) -> tuple[float, Planes]:
    """The residual's cost, with or without MED, whichever is less; and the reconstruction."""
    best: tuple[float, Planes] | None = None
    for med in ((), (Stage.MED,)):
        coded, recon = pixel_stages(planes, (*stages, *med), reference=reference, tolerance=tolerance)
        cost = native.ctx_cost(coded)
        if best is None or cost < best[0]:
            best = (cost, recon)
    assert best is not None
    return best


def _y_alone(planes: Planes, reference: Planes, tolerance: int, rows: int) -> tuple[float, Planes]:
    """RESIDUAL_QY's Y codes alone costed (with or without MED, the cheaper), and its reconstruction."""
    best: tuple[float, Planes] | None = None
    for med in ((), (Stage.MED,)):
        stages = (Stage.YUV420, Stage.RESIDUAL_QY, *med)
        coded, recon = pixel_stages(planes, stages, reference=reference, tolerance=tolerance)
        cost = native.ctx_cost(np.ascontiguousarray(coded[:, :rows]))
        if best is None or cost < best[0]:
            best = (cost, recon)
    assert best is not None
    return best


def _every_sample(planes: Planes, reference: Planes, tolerance: int) -> tuple[float, Planes]:
    """Every sample's residual on steps of 2T + 1 (RESIDUAL_Q on the one plane), the cheaper of with and
    without MED; no wire format carries this for YUV420 (it is the definition being weighed)."""
    best: tuple[float, Planes] | None = None
    for med in (False, True):
        coded, recon = native.pixels(
            planes, reference, rct=False, med=(med,), signed=(True,), tolerance=tolerance
        )
        assert recon is not None
        cost = native.ctx_cost(coded)
        if best is None or cost < best[0]:
            best = (cost, recon)
    assert best is not None
    return best


def measure(video: Path, frames: int | None, tolerance: int) -> Outcome:
    images, pictures, _fps = load(video, frames)
    if pictures is None or any(p is None for p in pictures):
        raise SystemExit(f"{video}: no yuv420p pictures (needs ffmpeg, and limited-range yuv420p video)")
    height, width = images[0].shape[:2]
    talls = [yuv.tall(p, width, height) for p in pictures if p is not None]
    exact = lattice = chroma_free = picture = 0.0
    picture_error = bgr_error = 0
    ref_lattice = ref_free = ref_picture = talls[0]
    for before, planes, image in zip(talls, talls[1:], images[1:], strict=False):
        exact += _cheaper(planes, (Stage.YUV420, Stage.RESIDUAL), before, 0)[0]
        cost, ref_lattice = _cheaper(planes, (Stage.YUV420, Stage.RESIDUAL_QY), ref_lattice, tolerance)
        lattice += cost
        cost, ref_free = _y_alone(planes, ref_free, tolerance, height)
        chroma_free += cost
        cost, ref_picture = _every_sample(planes, ref_picture, tolerance)
        picture += cost
        picture_error = max(picture_error, int(np.abs(ref_picture.astype(np.int16) - planes).max()))
        converted = yuv.to_bgr(np.ascontiguousarray(ref_picture).data, width, height, laid_out=True)
        bgr_error = max(bgr_error, int(np.abs(converted.astype(np.int16) - image).max()))
    gain = codec_ratio(images, pictures, tolerance) / codec_ratio(images, pictures, 0)
    return Outcome(
        str(video), len(images), exact, lattice, chroma_free, picture, picture_error, bgr_error, gain
    )


def main(argv: Sequence[str] | None = None) -> int:
    videos, frames, t = video_arguments(__doc__, argv)
    print(
        f"T = {t}, each against the exact residuals: | video | frames | Y on its lattice, chroma exact (the "
        f"codec: its own records) | Y on its lattice, chroma free | picture samples within T (its largest "
        f"picture / BGR error) |"
    )
    for video in videos:
        o = measure(video, frames, t)
        print(
            f"| {Path(o.video).name} | {o.frames} | {o.exact / o.lattice:.2f}x ({o.codec_gain:.2f}x) | "
            f"{o.exact / o.chroma_free:.2f}x | {o.exact / o.picture:.2f}x ({o.picture_error} / {o.bgr_error}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
