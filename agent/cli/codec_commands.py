"""``encode``, ``decode`` and ``bench``: the codec on files, without a broker."""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from agent.capture.ffmpeg import DECODERS
from agent.capture.files import open_path
from agent.cli.args import COUNT
from agent.codec import native
from agent.codec.cctv_file import Damage, scan_records
from agent.codec.decoder import FrameDecoder
from agent.codec.encoder import FrameEncoder
from agent.codec.settings import CodecSettings
from agent.codec.wire import Kind, pack_record, unpack_record
from agent.errors import CctvError, MissingReferenceError, WireFormatError
from agent.png import PngWriter
from agent.progress import Progress

log = logging.getLogger(__name__)

BENCH_KEYS = (
    "frames",
    "width",
    "height",
    "keys",
    "raw_bytes",
    "encoded_bytes",
    "ratio",
    "encode_ms_per_frame",
    "decode_ms_per_frame",
    "max_abs_error",
    "bit_exact",
    "peak_rss_mb",
)


def _add_codec_options(p: argparse.ArgumentParser) -> None:
    d = CodecSettings()
    p.add_argument(
        "--tolerance",
        type=int,
        default=d.tolerance,
        metavar="T",
        help="0 = exact (default); T > 0: every pixel within T of the source",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        metavar="S",
        help="SSIM to the key below which a frame becomes a key (default: %(default)s)",
    )
    p.add_argument(
        "--reference",
        choices=["key", "previous", "auto"],
        default=d.reference,
        help="what members are coded against (default: %(default)s)",
    )
    p.add_argument(
        "--max-key-interval",
        type=int,
        default=d.max_key_interval_frames,
        metavar="N",
        help="force a key every N frames at most (default: %(default)s)",
    )
    p.add_argument(
        "--entropy",
        choices=["auto", "ctx", "zstd"],
        default=d.entropy,
        help="entropy stage: ctx (context-modelled, smaller), zstd (PackBits + zstd, faster), or auto "
        "(ctx when the compiled coder is installed) (default: %(default)s)",
    )
    p.add_argument(
        "--zstd-level", type=int, default=d.zstd_level, help="zstd effort, with zstd (default: %(default)s)"
    )
    p.add_argument(
        "--jpeg-chroma",
        action="store_true",
        help="also try coding frames on their own as decoded 4:2:0 JPEGs (stills from snapshot cameras: "
        "16-27 %% smaller, slower to encode)",
    )
    p.add_argument(
        "--no-yuv",
        dest="yuv",
        action="store_false",
        help="code the BGR frames even where the ffmpeg child hands out the yuv420p pictures they were "
        "converted from (by default those pictures are coded: the same frames, 1.26-1.38x smaller on the "
        "public videos)",
    )
    p.add_argument("--frames", type=COUNT, default=None, metavar="N", help="only the first N frames")
    p.add_argument(
        "--camera-id", default="cam1", help="camera id written in the records (default: %(default)s)"
    )


def _settings(args: argparse.Namespace) -> CodecSettings:
    try:
        return CodecSettings(
            threshold=args.threshold,
            reference=args.reference,
            tolerance=args.tolerance,
            max_key_interval_frames=args.max_key_interval,
            max_key_interval_s=0.0,
            zstd_level=args.zstd_level,
            entropy=args.entropy,
            jpeg_chroma=args.jpeg_chroma,
            yuv=args.yuv,
        )
    except ValueError as e:
        raise CctvError(f"bad codec option: {e}") from e


def _add_decoder_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="auto",
        help="who decodes a video SOURCE: an ffmpeg child, whose frames are the same on every machine, or "
        "OpenCV, whose frames on ARM differ from x86's and code 28-35%% larger; auto (the default): ffmpeg where "
        "it is installed and the video is limited-range yuv420p",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a video file or an image folder into a .cctv file",
        description="Encode SOURCE (a video file, or a folder of images taken in name order) into "
        "FILE.cctv: wire-format records concatenated back to back (docs/wire-format.md).",
    )
    p.add_argument("source", type=Path, help="video file or folder of images")
    p.add_argument("--out", type=Path, required=True, help="the .cctv file to write")
    _add_decoder_option(p)
    _add_codec_options(p)
    p.set_defaults(handler=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="decode a .cctv file into lossless PNG frames",
        description="Decode every record of FILE.cctv, verify each frame's hash, and write it as "
        "OUT/<seq>.png (8-digit, zero-padded); a file that holds several cameras (files concatenated) is "
        "decoded into OUT/<camera>/<seq>.png. A damaged file is decoded as far as it can be: each bad "
        "stretch of bytes, each record whose frame fails its hash and each frame whose reference was lost "
        "is logged with its byte offset and skipped, every other frame is written, and the exit status is "
        "1. Frames after a damaged record decode again from the next key.",
    )
    p.add_argument("file", type=Path, help="a .cctv file written by 'encode'")
    p.add_argument("--out", type=Path, required=True, help="directory for the PNG frames (created)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first damaged record or lost reference instead of skipping it (exit status 1)",
    )
    p.set_defaults(handler=cmd_decode)

    p = sub.add_parser(
        "bench",
        help="measure ratio, speed, error and memory on a video or image folder",
        description="Encode and decode SOURCE in memory, frame by frame, and report: frames, keys, "
        "raw and encoded bytes, ratio, encode (SSIM decision included) and decode ms/frame, max abs "
        "error against the source, and peak RSS.",
    )
    p.add_argument("source", type=Path, help="video file or folder of images")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--threads",
        type=COUNT,
        default=native.THREADS,
        help="planes of a frame, or the bands of a frame's one large plane (2^19 samples or more: a 1080p "
        "picture has four), coded and decoded at once; 1 measures one core (default: the CPUs this process "
        "may run on, up to 4: %(default)s here)",
    )
    _add_decoder_option(p)
    _add_codec_options(p)
    p.set_defaults(handler=cmd_bench)


def _frames_total(source: Path, limit: int | None) -> int | None:
    if source.is_dir():
        n = sum(1 for f in source.iterdir() if f.is_file())
    else:
        cap = cv2.VideoCapture(str(source))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
    if n <= 0:
        return limit
    return min(n, limit) if limit else n


def cmd_encode(args: argparse.Namespace) -> int:
    settings = _settings(args)
    encoder = FrameEncoder(args.camera_id, settings)
    n = keys = written = 0
    if args.out.is_dir():  # found before the encode, not after it
        raise CctvError(f"{args.out}: is a directory; --out names the .cctv file to write")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part")
    try:
        with (
            open_path(args.source, decoder=args.decoder) as source,
            tmp.open("wb") as out,
            Progress(_frames_total(args.source, args.frames), "encoding") as bar,
        ):
            while args.frames is None or n < args.frames:
                frame = source.read()
                if frame is None:
                    break
                record = encoder.encode(
                    frame.image, frame.wall_time_ns, clock_synced=frame.clock_synced, picture=frame.picture
                )
                data = pack_record(record)
                out.write(data)
                n += 1
                written += len(data)
                keys += record.header.kind is Kind.KEY
                bar.advance(note=f"{written / 1e6:.1f} MB")
        if n == 0:
            raise CctvError(f"{args.source}: no frames to encode")
        tmp.replace(args.out)
    except OSError as e:  # a full disk: say so of the file the user named; nothing half-written is left
        tmp.unlink(missing_ok=True)
        raise CctvError(f"{args.out}: {e.strerror or e}") from e
    except BaseException:  # a bad source, ^C: likewise
        tmp.unlink(missing_ok=True)
        raise
    print(f"{args.out}: {n} frames, {keys} keys, {written} bytes")
    return 0


@dataclass
class DecodeTally:
    """What ``decode`` got out of a file, and what it could not."""

    frames: int = 0
    damaged: int = 0
    damaged_bytes: int = 0
    unverified: int = 0
    orphans: int = 0
    lost_groups: set[tuple[str, int]] = field(default_factory=set)
    """(camera, key seq) of the groups whose loss was logged."""
    cameras: int = 1

    @property
    def clean(self) -> bool:
        return not (self.damaged or self.unverified or self.orphans)

    def summary(self, out: Path) -> str:
        where = f"{out} ({self.cameras} cameras, a folder each)" if self.cameras > 1 else f"{out}"
        if self.clean:
            return f"{where}: {self.frames} frames decoded, every frame hash verified"
        lost = []
        if self.damaged:
            stretches = "stretch" if self.damaged == 1 else "stretches"
            lost.append(f"{self.damaged} damaged {stretches} of {self.damaged_bytes} bytes in all")
        if self.unverified:
            lost.append(f"{self.unverified} record{_s(self.unverified)} that failed verification")
        if self.orphans:
            lost.append(f"{self.orphans} frame{_s(self.orphans)} whose reference was lost")
        return f"{where}: {self.frames} frames decoded and verified; NOT decoded: " + ", ".join(lost)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def cmd_decode(args: argparse.Namespace) -> int:
    tally = DecodeTally()
    with args.file.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CctvError(f"{args.file}: empty file, no records")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cameras = _cameras_in(data)
            tally.cameras = max(1, len(cameras))
            args.out.mkdir(parents=True, exist_ok=True)
            if len(cameras) > 1:  # seqs are per camera: each camera's frames go to a folder of its own
                for camera in cameras:
                    (args.out / camera).mkdir(exist_ok=True)
            _decode_all(args, data, size, tally, cameras)
    print(tally.summary(args.out))
    return 0 if tally.clean else 1


def _cameras_in(data: mmap.mmap) -> list[str]:
    """The cameras whose valid records the file holds, in the order they first appear (a header scan: the
    records are parsed and checked, not decoded)."""
    cameras: dict[str, None] = {}
    for item in scan_records(data):
        if not isinstance(item, Damage):
            cameras.setdefault(item[1].header.camera_id, None)
    return list(cameras)


def _decode_all(
    args: argparse.Namespace, data: mmap.mmap, size: int, tally: DecodeTally, cameras: list[str]
) -> None:
    """Decode every record that can be, each problem logged where it is. ``--strict``'s first problem is raised
    once the frames decoded before it are written. ``cameras``: those the file holds (:func:`_cameras_in`);
    several (``cat`` of two files, say) are each decoded on their own into OUT/<camera>/."""
    several = len(cameras) > 1
    decoders = {camera: FrameDecoder() for camera in cameras}
    stop: CctvError | None = None

    def problem(message: str) -> bool:
        """Log it, or with --strict keep it to raise; True when the decode stops here."""
        nonlocal stop
        if args.strict:
            stop = CctvError(message)
            return True
        log.error("%s", message)
        return False

    with Progress(None, "decoding") as bar, PngWriter() as writer:
        for item in scan_records(data):
            if isinstance(item, Damage):
                tally.damaged += 1
                tally.damaged_bytes += item.length
                where = f"{args.file}: bytes {item.offset}..{item.offset + item.length - 1}"
                if problem(f"{where} hold no valid record ({item.length} bytes skipped): {item.reason}"):
                    break
                continue
            offset, record = item
            h = record.header
            camera = f"camera {h.camera_id}, " if several else ""
            where = f"{args.file}: the record at byte {offset} ({camera}seq {h.seq})"
            try:
                image = decoders[h.camera_id].decode(record)  # the same scan found every camera
            except MissingReferenceError as e:
                tally.orphans += 1
                if (h.camera_id, h.key_seq) in tally.lost_groups:  # logged once for each key group hit
                    continue
                tally.lost_groups.add((h.camera_id, h.key_seq))
                if problem(f"{where}: {e}; skipping it and every later frame that needs it"):
                    break
                continue
            except WireFormatError as e:
                tally.unverified += 1
                if problem(f"{where}: {e}"):
                    break
                continue
            folder = args.out / h.camera_id if several else args.out
            writer.write(folder / f"{h.seq:08d}.png", image)
            tally.frames += 1
            bar.advance(note=f"{offset * 100 // size}% of the file")
    if stop is not None:
        raise stop


@dataclass
class BenchResult:
    frames: int = 0
    width: int = 0
    height: int = 0
    keys: int = 0
    raw_bytes: int = 0
    encoded_bytes: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    max_abs_error: int = 0
    kinds: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        n = max(1, self.frames)
        return {
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "keys": self.keys,
            "raw_bytes": self.raw_bytes,
            "encoded_bytes": self.encoded_bytes,
            "ratio": round(self.raw_bytes / max(1, self.encoded_bytes), 3),
            "encode_ms_per_frame": round(1000 * self.encode_s / n, 2),
            "decode_ms_per_frame": round(1000 * self.decode_s / n, 2),
            "max_abs_error": self.max_abs_error,
            "bit_exact": self.max_abs_error == 0,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


def run_bench(
    source: Path, settings: CodecSettings, frames: int | None = None, decoder: str = "auto"
) -> BenchResult:
    """Encode then decode each frame as it is read (nothing is held but the codec's own references)."""
    encoder = FrameEncoder("bench", settings)
    frame_decoder = FrameDecoder()
    result = BenchResult()
    with open_path(source, decoder=decoder) as src, Progress(_frames_total(source, frames), "bench") as bar:
        while frames is None or result.frames < frames:
            frame = src.read()
            if frame is None:
                break
            image = frame.image
            t0 = time.perf_counter()
            data = pack_record(encoder.encode(image, frame.wall_time_ns, picture=frame.picture))
            t1 = time.perf_counter()
            decoded = frame_decoder.decode(unpack_record(data))
            t2 = time.perf_counter()
            result.encode_s += t1 - t0
            result.decode_s += t2 - t1
            result.frames += 1
            result.height, result.width = image.shape[:2]
            result.raw_bytes += image.nbytes
            result.encoded_bytes += len(data)
            result.keys += data[5] == Kind.KEY
            error = int(cv2.norm(decoded, image, cv2.NORM_INF))
            result.max_abs_error = max(result.max_abs_error, error)
            del decoded, data  # not alive during the next frame's encode: the peak RSS is the codec's
            bar.advance(note=f"ratio {result.raw_bytes / max(1, result.encoded_bytes):.2f}")
    if result.frames == 0:
        raise CctvError(f"{source}: no frames to benchmark")
    return result


def cmd_bench(args: argparse.Namespace) -> int:
    native.THREADS = args.threads
    result = run_bench(args.source, _settings(args), args.frames, args.decoder).as_dict()
    if args.json:
        print(json.dumps(result))
        return 0
    width = max(len(k) for k in BENCH_KEYS)
    for key in BENCH_KEYS:
        print(f"{key:<{width}}  {result[key]}")
    return 0
