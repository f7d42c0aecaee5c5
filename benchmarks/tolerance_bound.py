"""Where `tolerance = T` loses against its ideal: quantised residuals in the loop and out of it.

    .venv/bin/python benchmarks/tolerance_bound.py [SOURCE ...] [--frames N] [--tolerance T]

With no SOURCE it runs every public set under ``$CCTV_SHARED_DATA`` (default ``../shared/data``), as
``compare.py --all`` does.

The codec's near-lossless mode quantises residuals to steps of 2T+1 (``transforms.quantize_residual``) in the
loop: each frame is predicted from the previous *reconstruction*, whose error (up to ±T, spread evenly) then
re-enters the next residual. Per video this prints, costed with the CTX coder (each the cheaper of with and
without MED, as the encoder chooses; RCT on colour, which is exact on quantised codes too):

- exact: the lossless residuals against the previous frame;
- open loop: each frame's residual against the previous *captured* frame, quantised. Not decodable (the error
  would drift without bound), so not reachable: the gain quantising would give if its error cost nothing;
- closed loop: every frame quantised against the previous reconstruction, what a decoder can follow (the
  codec mixes these with exact frames, which is why it does a little better than this column).

For stills (a folder) each frame is intra coded: quantised pixels against exact ones, no loop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` importable
    sys.path.insert(0, str(REPO))


from agent.capture.files import iter_images  # noqa: E402
from agent.codec import native  # noqa: E402
from agent.codec import transforms as T  # noqa: E402
from agent.codec.pipeline import signedness  # noqa: E402
from agent.codec.transforms import Planes  # noqa: E402
from agent.codec.wire import Stage  # noqa: E402
from benchmarks.compare import shared_sets  # noqa: E402


def cheapest(planes: Planes, signed: tuple[bool, ...]) -> float:
    """CTX bytes of ``planes`` as they are or through MED, whichever is smaller (what the encoder picks)."""
    return min(native.ctx_cost(planes), native.ctx_cost(T.med(planes, signed)))


def frames_of(source: Path, limit: int) -> Iterator[Planes]:
    for image in iter_images(source, limit):
        yield T.to_planes(image)


def bound(source: Path, frames: int, tolerance: int) -> tuple[float, float, float]:
    """(exact, open-loop, closed-loop) CTX bytes over the source; for stills open and closed are the same."""
    exact = open_loop = closed_loop = 0.0
    previous: Planes | None = None
    recon: Planes | None = None
    for planes in frames_of(source, frames):
        colour = planes.shape[0] == 3
        if source.is_dir():
            signed = signedness((Stage.RCT,) if colour else (), planes.shape[0])
            codes, _ = T.quantize(planes, tolerance)
            exact += cheapest(_rct(planes), signed)
            open_loop += cheapest(_rct(codes), signed)
            closed_loop += cheapest(_rct(codes), signed)
        elif previous is not None and recon is not None:
            signed = signedness((Stage.RESIDUAL, Stage.RCT) if colour else (Stage.RESIDUAL,), planes.shape[0])
            exact += cheapest(_rct(T.residual(planes, previous)), signed)
            codes, _ = T.quantize_residual(planes, previous, tolerance)
            open_loop += cheapest(_rct(codes), signed)
            codes, recon = T.quantize_residual(planes, recon, tolerance)
            closed_loop += cheapest(_rct(codes), signed)
        else:
            recon = planes
        previous = planes
    return exact, open_loop, closed_loop


def _rct(planes: Planes) -> Planes:
    return T.rct(planes) if planes.shape[0] == 3 else planes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="videos or folders of stills")
    parser.add_argument("--frames", type=int, default=150, help="frames per source (default: 150)")
    parser.add_argument("--tolerance", type=int, default=2, help="T (default: 2)")
    args = parser.parse_args()
    if not native.AVAILABLE:
        parser.error(f"needs the compiled CTX coder: {native.HOW_TO_GET}")
    sources = args.sources or shared_sets()
    t = args.tolerance
    print(f"| source | exact (CTX bytes) | open loop T={t} (not decodable) | closed loop T={t} |")
    print("| --- | --- | --- | --- |")
    for source in sources:
        exact, open_loop, closed_loop = bound(source, args.frames, t)
        name = source.parent.name if source.name == "frames" else source.name
        print(
            f"| {name} | {exact:,.0f} | {open_loop:,.0f} ({exact / open_loop:.2f}×) "
            f"| {closed_loop:,.0f} ({exact / closed_loop:.2f}×) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
