"""Time the compiled CTX coder alone, on the very planes the encoder hands it, and compare two builds of it.

``docs/benchmarks.md`` quotes the coder's own ms a frame (``native.encode``: both passes; ``native.cost``: pass 1,
which is also what every recipe estimate runs; ``native.decode`` of what the installed build coded). Timing it
inside the encoder mixes it with SSIM, the pixel stages and Python; here the encoder runs once over the frames
while the planes it codes are kept, then each build codes and decodes them again, min of ``--repeat`` runs,
every build in this one process so the noisy machine treats them alike.

    .venv/bin/python benchmarks/ctx_timing.py tests/data/pets-cut.avi
    .venv/bin/python benchmarks/ctx_timing.py ../shared/data/lta-sg-2702-woodlands-checkpoint/frames --frames 30
    .venv/bin/python benchmarks/ctx_timing.py SOURCE --against /tmp/old/_native.cpython-311-x86_64-linux-gnu.so

``--against PATH`` loads another build of ``agent/codec/_native.c`` (e.g. ``main``'s, built into a scratch
folder) and checks that it writes the same bytes as the installed one and decodes the installed one's to the
planes coded, plane by plane, before timing both: a coder change meant to be faster only is proven
byte-identical on real footage this way.

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


def coded_planes(source: Path, frames: int, tolerance: int) -> list[Planes]:
    """Encode the frames with the default codec; return a copy of every array it gave the CTX coder."""
    kept: list[Planes] = []
    original = native.ctx_encode

    def keep(planes: Planes) -> bytes:
        kept.append(np.array(planes, copy=True))
        return original(planes)

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


def best_ms(call: Any, planes: list[Planes], repeat: int) -> float:
    """Min over `repeat` runs of the time to code every kept array once, in ms per array (per frame)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for p in planes:
            call(p.data, *p.shape)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(planes)


def _decodes_to(module: ModuleType, payload: bytes, planes: Planes) -> bool:
    """Whether ``module`` decodes ``payload`` to ``planes`` (a build that misreads it may also refuse it)."""
    try:
        return bool(module.decode(payload, *planes.shape, True, None) == planes.tobytes())
    except ValueError:
        return False


def best_decode_ms(module: ModuleType, coded: list[bytes], planes: list[Planes], repeat: int) -> float | None:
    """Min over `repeat` runs of the time to decode every coded array once, in ms per array (per frame); None for
    a build that refuses what the installed one coded (reported as differing)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            for payload, p in zip(coded, planes, strict=True):
                module.decode(payload, *p.shape, True, None)
        except ValueError:
            return None
        best = min(best, time.perf_counter() - start)
    return round(1000.0 * best / len(planes), 3)


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
    coded = [installed.encode(p.data, *p.shape) for p in planes]
    result: dict[str, Any] = {
        "source": str(args.source),
        "frames": len(planes),
        "shape": list(planes[0].shape),
        "tolerance": args.tolerance,
        "coded_bytes": sum(map(len, coded)),
        "builds": {},
    }
    if args.against:
        other = load_build(args.against)
        builds.append((str(args.against), other))
        differ = sum(other.encode(p.data, *p.shape) != mine for p, mine in zip(planes, coded, strict=True))
        differ += sum(not _decodes_to(other, c, p) for p, c in zip(planes, coded, strict=True))
        if differ:
            print(f"{differ} of {len(planes)} frames code or decode differently", file=sys.stderr)
        result["same_bytes"] = not differ
    for name, module in builds:
        result["builds"][name] = {
            "encode_ms_per_frame": round(best_ms(module.encode, planes, args.repeat), 3),
            "cost_ms_per_frame": round(best_ms(module.cost, planes, args.repeat), 3),
            "decode_ms_per_frame": best_decode_ms(module, coded, planes, args.repeat),
        }
    status = 0 if not args.against or result["same_bytes"] else 1
    if args.json:
        print(json.dumps(result))
        return status
    print(
        f"{result['source']}: {len(planes)} frames {planes[0].shape}, T={args.tolerance}, coded "
        f"{result['coded_bytes']} bytes" + (f", same bytes: {result['same_bytes']}" if args.against else "")
    )
    for name, timing in result["builds"].items():
        print(
            f"  {name}: encode {timing['encode_ms_per_frame']:.2f} ms/frame, pass 1 (cost) "
            f"{timing['cost_ms_per_frame']:.2f} ms/frame, decode "
            + (
                "refused"
                if timing["decode_ms_per_frame"] is None
                else f"{timing['decode_ms_per_frame']:.2f} ms/frame"
            )
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
