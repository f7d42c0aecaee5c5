"""Where `tolerance = T` loses against its ideal: quantised residuals in the loop and out of it, two ways.

    .venv/bin/python benchmarks/tolerance_bound.py [SOURCE ...] [--frames N] [--tolerance T]

With no SOURCE it runs every public set under ``$CCTV_SHARED_DATA`` (default ``../shared/data``), as
``compare.py --all`` does.

The codec's near-lossless mode quantises residuals to steps of 2T+1 in the loop: each frame is predicted from
the previous *reconstruction*, whose error (up to ±T) then re-enters the next residual. A colour frame is
quantised one of two ways: each channel on its own (RESIDUAL_Q, then RCT of the codes: three independent
errors, whose differences land in the chroma planes) or G alone with B and R carrying its error (RESIDUAL_QG:
the chroma is coded exactly and the shared error cancels out of the next residual's chroma). Per video this
prints, costed with the CTX coder (each the cheapest of the recipes the encoder tries, with MED on no plane,
every plane or the chroma planes, and with and without the chroma laid out by 2×2 block):

- exact: the lossless residuals against the previous frame;
- open loop: each frame's residual against the previous *captured* frame, quantised. Not decodable (the error
  would drift without bound), so not reachable: the gain quantising would give if its error cost nothing;
- closed loop: every frame quantised against the previous reconstruction, what a decoder can follow.

For stills (a folder) each frame is intra coded: quantised pixels (QUANTIZE, QUANTIZE_G) against exact ones,
no loop, so the open and closed columns are the same.
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
from agent.codec.encoder import block_chroma_variant  # noqa: E402
from agent.codec.pipeline import pixel_stages  # noqa: E402
from agent.codec.transforms import Planes  # noqa: E402
from agent.codec.wire import Stage  # noqa: E402
from benchmarks.compare import shared_sets  # noqa: E402

Recipes = tuple[tuple[Stage, ...], ...]
KINDS = ("exact", "each channel", "B, R follow G")


def recipes(kind: str, colour: bool, residual: bool) -> Recipes:
    """The pixel stages the encoder tries for one kind of coding (``KINDS``), before CTX; on colour frames each
    also with the chroma laid out by 2×2 block (BLOCK_CHROMA), as a group of decoded 4:2:0 video codes them."""
    plain = _recipes(kind, colour, residual)
    if not colour:
        return plain
    return plain + tuple(b for b in map(block_chroma_variant, plain) if b is not None)


def _recipes(kind: str, colour: bool, residual: bool) -> Recipes:
    if not residual:
        exact = (Stage.RCT, Stage.MED) if colour else (Stage.MED,)
        if kind == "exact":
            return (exact,)
        return ((Stage.QUANTIZE, *exact),) if kind == "each channel" else ((Stage.QUANTIZE_G, Stage.MED),)
    if kind == "B, R follow G":
        return ((Stage.RESIDUAL_QG, Stage.MED_CHROMA), (Stage.RESIDUAL_QG, Stage.MED))
    first = Stage.RESIDUAL if kind == "exact" else Stage.RESIDUAL_Q
    head = (first, Stage.RCT) if colour else (first,)
    tails: Recipes = ((), (Stage.MED,), (Stage.MED_CHROMA,)) if colour else ((), (Stage.MED,))
    return tuple((*head, *tail) for tail in tails if not (kind != "exact" and Stage.MED_CHROMA in tail))


def cheapest(
    planes: Planes, reference: Planes | None, tolerance: int, tried: Recipes
) -> tuple[float, Planes]:
    """CTX bytes of the cheapest recipe, and its reconstruction (the same for all of one kind)."""
    best: tuple[float, Planes] | None = None
    for stages in tried:
        data, recon = pixel_stages(planes, (*stages, Stage.CTX), reference=reference, tolerance=tolerance)
        cost = native.ctx_cost(data)
        if best is None or cost < best[0]:
            best = (cost, recon)
    assert best is not None
    return best


def frames_of(source: Path, limit: int) -> Iterator[Planes]:
    for image in iter_images(source, limit):
        yield T.to_planes(image)


def bound(source: Path, frames: int, tolerance: int) -> dict[str, tuple[float, float]]:
    """(open-loop, closed-loop) CTX bytes over the source for each kind that applies; for stills and for
    exact coding the two are the same."""
    totals: dict[str, list[float]] = {}
    previous: Planes | None = None
    recon: dict[str, Planes] = {}
    for planes in frames_of(source, frames):
        colour = planes.shape[0] == 3
        kinds = KINDS if colour else KINDS[:2]
        if source.is_dir() or previous is None:
            for kind in kinds:
                cost, recon[kind] = cheapest(planes, None, tolerance, recipes(kind, colour, residual=False))
                if source.is_dir():
                    totals.setdefault(kind, [0.0, 0.0])
                    totals[kind][0] += cost
                    totals[kind][1] += cost
        else:
            for kind in kinds:
                tried = recipes(kind, colour, residual=True)
                open_cost, _ = cheapest(planes, previous, tolerance, tried)
                closed_cost, recon[kind] = cheapest(planes, recon[kind], tolerance, tried)
                totals.setdefault(kind, [0.0, 0.0])
                totals[kind][0] += open_cost
                totals[kind][1] += closed_cost
        previous = planes
    return {kind: (pair[0], pair[1]) for kind, pair in totals.items()}


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
    print(
        f"| source | exact (CTX bytes) | each channel, open loop T={t} (not decodable) | each channel, closed "
        f"loop | B, R follow G, open loop | B, R follow G, closed loop |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for source in sources:
        costs = bound(source, args.frames, t)
        exact = costs["exact"][1]
        name = source.parent.name if source.name == "frames" else source.name
        cells = [f"{exact:,.0f}"]
        for kind in KINDS[1:]:
            if kind in costs:
                cells += [f"{exact / costs[kind][0]:.2f}×", f"{exact / costs[kind][1]:.2f}×"]
            else:
                cells += ["n/a", "n/a"]
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
