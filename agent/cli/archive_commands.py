"""``archive info|verify|export|prune``: look into, check, get frames out of, and trim a collector's archive."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.args import COUNT, POSITIVE
from agent.errors import CctvError
from agent.progress import Progress

if TYPE_CHECKING:
    from agent.archive.maintenance import CameraInfo

log = logging.getLogger(__name__)


def parse_time(text: str) -> datetime:
    """ISO-8601; a time without a zone is UTC (the archive's days and bounds are UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from e
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def register(sub: Any) -> None:
    archive = sub.add_parser(
        "archive",
        help="inspect, verify, export from or prune a collector's archive",
        description="The collector stores records verbatim per site, camera and UTC day, indexed in SQLite "
        "(docs/archive-format.md). These commands read it; only 'prune' writes.",
    )
    commands = archive.add_subparsers(dest="archive_command", metavar="ACTION", required=True)

    p = commands.add_parser("info", help="per camera: time span, frames, keys, bytes, ratio, gaps, orphans")
    p.add_argument("root", type=Path, help="archive root directory")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    _add_selection(p)
    p.set_defaults(handler=cmd_info)

    p = commands.add_parser(
        "verify",
        help="decode every record and check every frame hash (exit 0 only if all is well)",
        description="Decode every indexed record of every camera from its key, check each frame's hash,\n"
        "and list every problem: damaged bytes, hash mismatches, missing or short segments, and\n"
        "records whose reference never arrived. Exit status 0 only if there is none.\n"
        "--camera, --site and --from/--to narrow it (times ISO-8601, UTC when they carry no zone).",
        epilog="examples:\n  cctv-agent archive verify /srv/cctv/archive --jobs 4\n"
        "  cctv-agent archive verify /srv/cctv/archive --camera cam7 --from 2026-12-06T18:00 --to 2026-12-07T06:00",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", type=Path, help="archive root directory")
    p.add_argument(
        "--jobs",
        type=COUNT,
        default=min(8, os.cpu_count() or 1),
        help="cameras verified at once, each in its own process (about 100 MB at 1080p) "
        "(default: the number of CPUs up to 8, here %(default)s)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (root, ok, cameras, records, decoded, problems, notes) instead of lines",
    )
    _add_selection(p)
    _add_range(p, "only the records captured from T (each still decoded from its key)")
    p.set_defaults(handler=cmd_verify)

    p = commands.add_parser(
        "export",
        help="frames to PNG (a directory), lossless FFV1 (.mkv) or an H.264 preview (.mp4)",
        description="Decode a camera's frames in [--from, --to) and write them as OUT/<seq>.png, or pipe them "
        "to ffmpeg: OUT.mkv is FFV1 (lossless), OUT.mp4 is H.264 (crf 23, yuv420p, a preview). Times are "
        "ISO-8601, UTC when they carry no zone.",
    )
    p.add_argument("root", type=Path, help="archive root directory")
    p.add_argument("--camera", required=True, help="camera id")
    p.add_argument("--site", default=None, help="site id (needed only if the camera exists at several)")
    _add_range(p, "first capture time")
    p.add_argument(
        "--fps", type=POSITIVE, default=None, help="video frame rate (default: from capture times)"
    )
    p.add_argument("--out", type=Path, required=True, help="directory for PNG, or FILE.mkv / FILE.mp4")
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser(
        "prune",
        help="delete whole key groups, oldest first, by age and/or total size",
        description="Retention for one camera: delete whole key groups older than --max-age-days, then the "
        "oldest until the camera holds at most --max-bytes of records. Needs the camera's writer lock: run "
        "it while the collector is stopped, or let the collector apply retention itself.",
    )
    p.add_argument("root", type=Path, help="archive root directory")
    p.add_argument("--camera", required=True, help="camera id")
    p.add_argument("--site", default=None, help="site id (needed only if the camera exists at several)")
    p.add_argument("--max-age-days", type=float, default=None, metavar="D")
    p.add_argument("--max-bytes", type=int, default=None, metavar="N")
    p.set_defaults(handler=cmd_prune)


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _table(cameras: list[CameraInfo]) -> None:
    for c in cameras:
        gaps = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in c.gaps)
        rows = [
            ("site", c.site),
            ("span", f"{_when(c.first_ns)} .. {_when(c.last_ns)}"),
            ("frames", c.frames),
            ("keys", c.keys),
            ("stored bytes", c.stored_bytes),
            ("raw bytes", c.raw_bytes),
            ("ratio", f"{c.ratio:.2f}"),
            ("segments", f"{c.segments} ({c.disk_bytes} bytes on disk)"),
            (
                "missing seqs",
                f"{c.missing}" + (f" ({gaps}{', …' if c.missing > len(c.gaps) else ''})" if gaps else ""),
            ),
            ("orphans", c.orphans),
        ]
        print(f"camera {c.camera}")
        for name, value in rows:
            print(f"  {name:<13} {value}")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--camera",
        dest="cameras",
        action="append",
        default=[],
        metavar="ID",
        help="only this camera (repeat for several; default: every camera)",
    )
    p.add_argument(
        "--site",
        dest="sites",
        action="append",
        default=[],
        metavar="S",
        help="only cameras of this site (repeatable)",
    )


def _add_range(p: argparse.ArgumentParser, start_help: str) -> None:
    p.add_argument("--from", dest="start", type=parse_time, default=None, metavar="T", help=start_help)
    p.add_argument("--to", dest="end", type=parse_time, default=None, metavar="T", help="end (exclusive)")


def _check_range(args: argparse.Namespace) -> None:
    if args.start is not None and args.end is not None and args.start >= args.end:
        raise CctvError(
            f"--from {args.start.isoformat()} is not before --to {args.end.isoformat()}: an empty range"
        )


def cmd_info(args: argparse.Namespace) -> int:
    from agent.archive.maintenance import info

    cameras = info(args.root, args.cameras, args.sites)
    if args.json:
        print(json.dumps([c.as_dict() for c in cameras]))
    elif not cameras:
        print(f"{args.root}: no cameras")
    else:
        _table(cameras)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.archive.export import count_frames
    from agent.archive.maintenance import select, verify
    from agent.archive.paths import find_cameras
    from agent.archive.reader import to_ns

    _check_range(args)
    total = None
    try:  # only for the progress bar: verify itself reports a camera with segments but no index
        chosen = select(args.root, find_cameras(args.root), args.cameras, args.sites)
        total = sum(count_frames(args.root, camera, site, args.start, args.end) for site, camera in chosen)
    except CctvError:
        pass
    span = (to_ns(args.start), to_ns(args.end))
    with Progress(total, "verifying") as bar:
        report = verify(
            args.root,
            on_record=bar.advance,
            jobs=args.jobs,
            cameras=args.cameras,
            sites=args.sites,
            span=span,
        )
    if args.json:  # for monitoring: the same report, and the same exit status
        print(json.dumps({"root": str(args.root), "ok": report.ok, **dataclasses.asdict(report)}))
        return 0 if report.ok else 1
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    print(
        f"{args.root}: {report.cameras} cameras, {report.records} records, {report.decoded} decoded: {verdict}"
    )
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from agent.archive.export import camera_span, count_frames, export, export_format

    fmt = export_format(args.out)
    _check_range(args)
    total = count_frames(args.root, args.camera, args.site, args.start, args.end)
    if total == 0:
        span = camera_span(args.root, args.camera, args.site)
        holds = "no records" if span is None else f"records from {_when(span[0])} to {_when(span[1])}"
        raise CctvError(f"camera {args.camera!r}: no records in that range; it holds {holds}")
    with Progress(total, f"exporting {fmt}") as bar:
        result = export(
            args.root,
            args.camera,
            args.out,
            site=args.site,
            start=args.start,
            end=args.end,
            fps=args.fps,
            on_frame=bar.advance,
        )
    rate = f" at {result.fps:g} fps" if result.fps else ""
    print(f"{result.path}: {result.frames} frames ({result.format}{rate})")
    if result.frames == 0:
        raise CctvError(f"camera {args.camera!r}: no decodable frames in that range")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from agent.archive.store import Archive

    if args.max_age_days is None and args.max_bytes is None:
        raise CctvError("prune: give --max-age-days and/or --max-bytes")
    if not (args.root / "VERSION").is_file():
        raise CctvError(f"{args.root}: not an archive (no VERSION file)")
    with Archive(args.root) as archive:
        try:
            result = archive.apply_retention(
                args.camera, site=args.site, max_age_days=args.max_age_days, max_bytes=args.max_bytes
            )
        except ValueError as e:
            raise CctvError(f"prune: {e}") from e
    print(
        f"camera {args.camera}: deleted {result.groups} groups, {result.records} records, {result.bytes} bytes; "
        f"{result.segments} segment files removed"
    )
    return 0
