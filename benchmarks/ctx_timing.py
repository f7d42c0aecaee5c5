"""Time the compiled CTX coder alone, on the very planes the encoder hands it, and compare two builds of it.

``docs/benchmarks.md`` quotes the coder's own ms a frame (``native.encode``: both passes; ``native.cost``: pass 1,
which is also what every recipe estimate runs). Timing it inside the encoder mixes it with SSIM, the pixel stages
and Python; here the encoder runs once over the frames while the planes it codes (and the ways it gives them
with) are kept, then each build codes them again, min of ``--repeat`` runs, every build in this one process so
the noisy machine treats them alike.

    .venv/bin/python benchmarks/ctx_timing.py tests/data/pets-cut.avi
    .venv/bin/python benchmarks/ctx_timing.py ../shared/data/lta-sg-2702-woodlands-checkpoint/frames --frames 30
    .venv/bin/python benchmarks/ctx_timing.py SOURCE --against /tmp/old/_native.cpython-311-x86_64-linux-gnu.so

``--against PATH`` loads another build of ``agent/codec/_native.c`` (e.g. ``main``'s, built into a scratch
folder) and checks that it writes the same bytes as the installed one, plane by plane, before timing both: a
coder change meant to be faster only is proven byte-identical on real footage this way.

Memory: the kept planes are the frames' size (30 1080p frames: 187 MB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import process
from agent.capture.files import iter_images
from agent.codec import native
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings

Planes = np.ndarray[Any, np.dtype[np.uint8]]


Kept = tuple[Planes, bytes | None]
"""An array the encoder gave the CTX coder, and the ways (per plane: runs searched or not) it gave with it."""


def coded_planes(source: Path, frames: int, tolerance: int) -> list[Kept]:
    """Encode the frames with the default codec; return a copy of every array it gave the CTX coder."""
    kept: list[Kept] = []
    original = native.ctx_encode

    def keep(planes: Planes, ways: bytes | None = None) -> bytes:
        kept.append((np.array(planes, copy=True), ways))
        return original(planes, ways)

    native.ctx_encode = keep  # the pipeline looks it up on the module at every call
    try:
        encoder = FrameEncoder("bench", CodecSettings(tolerance=tolerance, entropy="ctx"))
        for i, image in enumerate(iter_images(source, limit=frames)):
            encoder.encode(image, 1_000_000_000 * i)
    finally:
        native.ctx_encode = original
    return kept


def load_build(path: Path) -> ModuleType:
    """Another build of the extension, loaded beside the installed one (its init function names it _native)."""
    spec = importlib.util.spec_from_file_location("_native", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encode_call(module: ModuleType) -> Any:
    """``module.encode`` taking a kept array's ways as the encoder gave them; a build from before ways (they
    only let a plane skip the run search) is called without them."""
    try:
        module.encode(b"\0", 1, 1, 1, b"\1")
    except TypeError:
        return lambda data, c, h, w, ways: module.encode(data, c, h, w)
    return lambda data, c, h, w, ways: module.encode(data, c, h, w, *(() if ways is None else (ways,)))


def cost_call(module: ModuleType) -> Any:
    return lambda data, c, h, w, ways: module.cost(data, c, h, w)


def best_ms(call: Any, planes: list[Kept], repeat: int) -> float:
    """Min over `repeat` runs of the time to code every kept array once, in ms per array (per frame)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for p, ways in planes:
            call(p.data, *p.shape, ways)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(planes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="video file or folder of stills")
    parser.add_argument("--frames", type=int, default=60, help="first N frames (default: 60)")
    parser.add_argument("--tolerance", type=int, default=0, help="the codec's tolerance (default: 0)")
    parser.add_argument(
        "--repeat", type=int, default=7, help="runs per timing, the fastest counts (default: 7)"
    )
    parser.add_argument("--against", type=Path, help="another build of the extension (.so) to compare with")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    process.configure()
    if not native.AVAILABLE:
        raise SystemExit(f"the compiled coder is not built here: {native.HOW_TO_GET}")
    planes = coded_planes(args.source, args.frames, args.tolerance)
    if not planes:
        raise SystemExit(f"{args.source}: no frames")
    installed = importlib.import_module("agent.codec._native")
    builds: list[tuple[str, ModuleType]] = [("installed", installed)]
    coded = [encode_call(installed)(p.data, *p.shape, ways) for p, ways in planes]
    shape = planes[0][0].shape
    result: dict[str, Any] = {
        "source": str(args.source),
        "frames": len(planes),
        "shape": list(shape),
        "tolerance": args.tolerance,
        "coded_bytes": sum(map(len, coded)),
        "builds": {},
    }
    if args.against:
        other = load_build(args.against)
        builds.append((str(args.against), other))
        encode = encode_call(other)
        differ = sum(
            encode(p.data, *p.shape, ways) != mine for (p, ways), mine in zip(planes, coded, strict=True)
        )
        if differ:
            print(f"{differ} of {len(planes)} frames code to different bytes", file=sys.stderr)
        result["same_bytes"] = not differ
    for name, module in builds:
        result["builds"][name] = {
            "encode_ms_per_frame": round(best_ms(encode_call(module), planes, args.repeat), 3),
            "cost_ms_per_frame": round(best_ms(cost_call(module), planes, args.repeat), 3),
        }
    status = 0 if not args.against or result["same_bytes"] else 1
    if args.json:
        print(json.dumps(result))
        return status
    print(
        f"{result['source']}: {len(planes)} frames {shape}, T={args.tolerance}, coded "
        f"{result['coded_bytes']} bytes" + (f", same bytes: {result['same_bytes']}" if args.against else "")
    )
    for name, timing in result["builds"].items():
        print(
            f"  {name}: encode {timing['encode_ms_per_frame']:.2f} ms/frame, pass 1 (cost) "
            f"{timing['cost_ms_per_frame']:.2f} ms/frame"
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
