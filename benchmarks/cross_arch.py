"""Check that another machine's build of the codec writes the same bytes as this one's (a Pi's arm64 build, say).

    .venv/bin/python benchmarks/cross_arch.py frames OUT/frames            # once: the frames both sides code
    .venv/bin/python benchmarks/cross_arch.py write OUT/frames OUT/x86_64   # on each machine
    .venv/bin/python benchmarks/cross_arch.py compare OUT/frames OUT/x86_64 OUT/aarch64

``frames`` writes lossless PNGs: frames of the committed PETS clip, the same frames through a 4:2:0 JPEG (what a
snapshot camera gives) and, where ``../shared/data`` is present, two of the public 1080p JPEG stills. A video is
decoded once, here, because FFmpeg's decoders may round differently from one build to another; PNG is exact.
``write`` codes the frames with each of several settings (``SETTINGS``) into ``NAME.cctv`` (records back to back,
docs/wire-format.md) with fixed capture times. ``compare`` reads two such folders and checks, stream by stream and
record by record: the same header but for the SSIM (OpenCV's float blurs round differently from one instruction set
to another: it is reported, and only matters if it crosses the key threshold, which then shows as a different
kind), the same payload bytes, and that both streams decode, here, to within their tolerance of the frames.
It exits 1 on any difference. ``.ci/arm64-check`` runs ``write`` in an arm64 Debian under qemu-user.

The codec is the same everywhere; the frames a camera's video decodes to are not. OpenCV converts each decoded
YUV 4:2:0 picture to BGR with FFmpeg's swscale, whose code differs from one instruction set to another, and the
codec's ratio depends on how (BLOCK_CHROMA pays where B - G and R - G are constant over each 2×2 block)::

    .venv/bin/python benchmarks/cross_arch.py decode VIDEO OUT/x86_64.npy --frames 150   # on each machine
    .venv/bin/python benchmarks/cross_arch.py ratios OUT/x86_64.npy OUT/aarch64.npy      # anywhere

``ratios`` codes each machine's decode of the video here, exact and at T = 2 (each record decoded again and
checked), and prints the ratios beside the share of aligned 2×2 blocks whose B - G is constant, and how far each
decode is from the first one given. ``decode --decoder ffmpeg`` decodes as the agent does where ffmpeg is
installed (``agent.capture.ffmpeg``: an ffmpeg child, its YUV converted the same way on every machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `agent` and `benchmarks` importable
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from agent.capture.files import iter_images  # noqa: E402
from agent.codec.cctv_file import iter_records  # noqa: E402
from agent.codec.decoder import FrameDecoder  # noqa: E402
from agent.codec.encoder import FrameEncoder  # noqa: E402
from agent.codec.settings import CodecSettings  # noqa: E402
from agent.codec.wire import Record, pack_record  # noqa: E402
from agent.errors import CctvError  # noqa: E402
from benchmarks.compare import run_ours  # noqa: E402

PETS_CUT = REPO / "tests" / "data" / "pets-cut.avi"
LTA = REPO.parent / "shared" / "data" / "lta-sg-2702-woodlands-checkpoint" / "frames"
SETTINGS = {
    "lossless": CodecSettings(),
    "t2": CodecSettings(tolerance=2),
    "jpeg_chroma": CodecSettings(jpeg_chroma=True),
    "jpeg_chroma-t2": CodecSettings(jpeg_chroma=True, tolerance=2),
    "zstd": CodecSettings(entropy="zstd"),
    "t1-key": CodecSettings(tolerance=1, reference="key"),
}
"""Each setting a stream: between them every stage the encoder picks on these frames (the CTX coder, the fused
pixel pass with and without quantising, the 2×2 chroma layout, JPEG_CHROMA both ways, PackBits and zstd)."""


def make_frames(out: Path, video_frames: int = 12, stills: int = 3) -> list[Path]:
    """Write the frames both machines code (see the module note); returns their paths in coding order."""
    out.mkdir(parents=True, exist_ok=True)
    frames = list(iter_images(PETS_CUT, video_frames + stills))
    images = frames[:video_frames]
    for frame in frames[video_frames:]:
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        images.append(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    if LTA.is_dir():
        images += list(iter_images(LTA, 2))
    paths = []
    for i, image in enumerate(images):
        path = out / f"{i:03d}.png"
        if not cv2.imwrite(str(path), image):
            raise SystemExit(f"{path}: could not write")
        paths.append(path)
    return paths


def read_frames(folder: Path) -> list[np.ndarray]:
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise SystemExit(f"{folder}: no PNG frames (make them with the 'frames' command)")
    return [np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR)) for p in paths]


def write_streams(frames: list[np.ndarray], out: Path) -> dict[str, int]:
    """Code the frames with each setting into OUT/NAME.cctv; returns each stream's bytes."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, settings in SETTINGS.items():
        encoder = FrameEncoder("cross-arch", settings)
        data = b"".join(pack_record(encoder.encode(f, 1_000_000_000 * i)) for i, f in enumerate(frames))
        (out / f"{name}.cctv").write_bytes(data)
        sizes[name] = len(data)
    (out / "MACHINE").write_text(f"{platform.machine()} {platform.python_version()}\n")
    return sizes


def read_stream(path: Path) -> list[Record]:
    with path.open("rb") as stream:
        return list(iter_records(stream))


def compare_streams(
    frames: list[np.ndarray], ours: list[Record], theirs: list[Record], tolerance: int
) -> tuple[list[str], float]:
    """What differs between two streams of the same frames (empty when nothing but the SSIM does), and the largest
    SSIM difference."""
    problems = []
    if len(ours) != len(theirs) or len(ours) != len(frames):
        return [f"{len(ours)} and {len(theirs)} records for {len(frames)} frames"], 0.0
    ssim = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        ssim = max(ssim, abs(a.header.ssim - b.header.ssim))
        fields = [
            f.name
            for f in dataclasses.fields(a.header)
            if f.name != "ssim" and getattr(a.header, f.name) != getattr(b.header, f.name)
        ]
        if fields:
            problems.append(f"record {i}: header fields differ: {', '.join(fields)}")
        if a.payload != b.payload:
            problems.append(f"record {i}: payloads differ ({len(a.payload)} and {len(b.payload)} bytes)")
    for side, records in (("first", ours), ("second", theirs)):
        decoder = FrameDecoder()
        for i, (record, frame) in enumerate(zip(records, frames, strict=True)):
            try:
                error = int(cv2.norm(decoder.decode(record), frame, cv2.NORM_INF))
            except CctvError as e:
                problems.append(f"{side} stream, record {i}: does not decode: {e}")
                break  # what follows needs this one
            if error > tolerance:
                problems.append(f"{side} stream, record {i}: decodes {error} off (tolerance {tolerance})")
    return problems, ssim


def decode_video(video: Path, out: Path, frames: int, decoder: str = "opencv") -> int:
    """This machine's decode of the first frames of a video (by OpenCV or by an ffmpeg child, converted by
    ``agent.codec.yuv``), as one (N, H, W, 3) array in OUT (.npy)."""
    images = list(iter_images(video, frames, decoder=decoder))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.stack(images))
    return len(images)


def constant_blocks(image: np.ndarray) -> float:
    """The share of aligned 2×2 blocks over which B - G is constant (decoded 4:2:0 video, converted per block)."""
    diff = image[..., 0].astype(np.int16) - image[..., 1]
    height, width = diff.shape[0] // 2 * 2, diff.shape[1] // 2 * 2
    blocks = diff[:height, :width].reshape(height // 2, 2, width // 2, 2)
    return float((blocks.max(axis=(1, 3)) == blocks.min(axis=(1, 3))).mean())


def ratios(frames: np.ndarray) -> dict[str, float]:
    """Raw over coded bytes of the frames, exact and at T = 2 (the default codec otherwise), as ``compare.py``
    codes them: every record decoded again, and it must be within its tolerance (SystemExit if not)."""
    out = {}
    for name, tolerance in (("exact", 0), ("T=2", 2)):
        result = run_ours(list(frames), tolerance=tolerance)
        if result.max_abs_error is None or result.max_abs_error > tolerance or result.ratio is None:
            raise SystemExit(
                f"{name}: decodes {result.max_abs_error} off: the codec is broken ({result.note})"
            )
        out[name] = result.ratio
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("frames", help="write the PNG frames both machines code")
    make.add_argument("out", type=Path)
    write = commands.add_parser("write", help="code the frames with every setting into FOLDER/NAME.cctv")
    write.add_argument("frames", type=Path)
    write.add_argument("out", type=Path)
    compare = commands.add_parser("compare", help="check two machines' streams of the same frames")
    compare.add_argument("frames", type=Path)
    compare.add_argument("first", type=Path)
    compare.add_argument("second", type=Path)
    decode = commands.add_parser("decode", help="this machine's decode of a video's first frames, as .npy")
    decode.add_argument("video", type=Path)
    decode.add_argument("out", type=Path)
    decode.add_argument("--frames", type=int, default=150, help="first N frames (default: 150)")
    decode.add_argument(
        "--decoder", choices=("opencv", "ffmpeg"), default="opencv", help="who decodes (default: opencv)"
    )
    measure = commands.add_parser("ratios", help="code machines' decodes (.npy) here: ratios and 2x2 blocks")
    measure.add_argument("decodes", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "frames":
        print(f"{len(make_frames(args.out))} frames in {args.out}")
        return 0
    if args.command == "decode":
        count = decode_video(args.video, args.out, args.frames, args.decoder)
        print(f"{platform.machine()}, {args.decoder}: {count} frames in {args.out}")
        return 0
    if args.command == "ratios":
        first = None
        for path in args.decodes:
            decoded = np.load(path)
            cells = ", ".join(f"{k} {v:.2f}x" for k, v in ratios(decoded).items())
            share = np.mean([constant_blocks(f) for f in decoded[:: max(1, len(decoded) // 10)]])
            same = ""
            if first is not None and first.shape == decoded.shape:
                diff = np.abs(first.astype(np.int16) - decoded)
                share_differing = (diff > 0).mean()
                same = f"; {share_differing:.2%} of samples differ from {args.decodes[0].name}, by {diff.max()} at most"
            first = decoded if first is None else first
            print(
                f"{path.name}: {len(decoded)} frames, {cells}; B - G constant over {share:.1%} of 2x2 blocks{same}"
            )
        return 0
    frames = read_frames(args.frames)
    if args.command == "write":
        for name, size in write_streams(frames, args.out).items():
            print(f"{platform.machine()}: {name}: {len(frames)} frames, {size:,} bytes")
        return 0
    failed = False
    for name, settings in SETTINGS.items():
        first, second = read_stream(args.first / f"{name}.cctv"), read_stream(args.second / f"{name}.cctv")
        problems, ssim = compare_streams(frames, first, second, settings.tolerance)
        verdict = "the same payloads, both decode" if not problems else f"{len(problems)} differences"
        print(f"{name}: {verdict} (SSIM fields differ by up to {ssim:.1e})")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
