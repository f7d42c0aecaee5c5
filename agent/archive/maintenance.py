"""Looking after an archive: what it holds (``info``), whether every frame still decodes (``verify``), and which
key groups retention may delete.

``info`` and ``verify`` only read, so they can run beside the collector. Retention deletes, so it goes through
the writer (:meth:`agent.archive.store.Archive.apply_retention`); only the choice of groups lives here.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.archive.paths import check_version, find_cameras, parse_segment
from agent.archive.reader import CameraReader, Reconstructor
from agent.codec import native
from agent.errors import ArchiveError, CctvError

log = logging.getLogger(__name__)

_NS_PER_DAY = 86_400 * 1_000_000_000
MAX_LISTED_GAPS = 20


@dataclass(frozen=True, slots=True)
class RetentionResult:
    groups: int
    records: int
    bytes: int
    segments: int
    """Segment files removed (emptied by the deletion)."""


def plan_retention(
    groups: Sequence[tuple[int, int, int]],
    pins: Sequence[tuple[int, int]],
    max_age_days: float | None,
    max_bytes: int | None,
    now_ns: int,
) -> list[int]:
    """Key seqs of the groups to delete: the oldest ones, as a prefix, never one a kept group refers into.

    ``groups`` is (key_seq, newest capture_time_ns, bytes) in key_seq order; ``pins`` is (referenced group,
    referencing group) for references that cross groups, which the encoder never makes but a record may claim.
    """
    if max_age_days is not None and max_age_days < 0:
        raise ValueError(f"max_age_days must be ≥ 0, got {max_age_days}")
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be ≥ 0, got {max_bytes}")
    count = 0
    if max_age_days is not None:
        cutoff = now_ns - int(max_age_days * _NS_PER_DAY)
        while count < len(groups) and groups[count][1] < cutoff:
            count += 1
    if max_bytes is not None:
        remaining = sum(g[2] for g in groups[count:])
        while count < len(groups) and remaining > max_bytes:
            remaining -= groups[count][2]
            count += 1
    referrers: dict[int, set[int]] = {}
    for target, referrer in pins:
        referrers.setdefault(target, set()).add(referrer)
    while count > 0:
        doomed = {g[0] for g in groups[:count]}
        blocked = [i for i, g in enumerate(groups[:count]) if referrers.get(g[0], set()) - doomed]
        if not blocked:
            break
        count = blocked[0]
    return [g[0] for g in groups[:count]]


@dataclass(slots=True)
class CameraInfo:
    site: str
    camera: str
    first_ns: int | None
    last_ns: int | None
    frames: int
    keys: int
    stored_bytes: int
    raw_bytes: int
    missing: int
    """Seqs absent between the first and the last stored one."""
    gaps: list[tuple[int, int]]
    """The first gaps as inclusive (first missing, last missing) seq ranges."""
    orphans: int
    """Records still waiting for (a record of) their reference chain."""
    segments: int
    disk_bytes: int

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    def as_dict(self) -> dict[str, object]:
        d = {name: getattr(self, name) for name in self.__slots__}
        d["ratio"] = round(self.ratio, 3)
        d["gaps"] = [list(g) for g in self.gaps]
        return d


def camera_info(root: Path, site: str, camera: str) -> CameraInfo:
    with CameraReader(root, site, camera) as reader:
        q = reader.conn.execute
        frames, keys, stored, raw, first, last, lo, hi, orphans = q(
            "SELECT COUNT(*), COALESCE(SUM(kind = 0), 0), COALESCE(SUM(size), 0), COALESCE(SUM(raw_size), 0), "
            "MIN(capture_time_ns), MAX(capture_time_ns), MIN(seq), MAX(seq), COALESCE(SUM(decodable = 0), 0) "
            "FROM records"
        ).fetchone()
        gaps = [
            (int(a), int(b))
            for a, b in q(
                "SELECT seq + 1, next - 1 FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS next FROM records) "
                "WHERE next > seq + 1 ORDER BY seq LIMIT ?",
                (MAX_LISTED_GAPS,),
            )
        ]
        segments = [p for p in reader.directory.glob("*/segment-*.cctv") if parse_segment(p) is not None]
    return CameraInfo(
        site=site,
        camera=camera,
        first_ns=first,
        last_ns=last,
        frames=frames,
        keys=keys,
        stored_bytes=stored,
        raw_bytes=raw,
        missing=0 if frames == 0 else (hi - lo + 1) - frames,
        gaps=gaps,
        orphans=orphans,
        segments=len(segments),
        disk_bytes=sum(p.stat().st_size for p in segments),
    )


def select(
    root: Path, found: Sequence[tuple[str, str]], cameras: Collection[str] = (), sites: Collection[str] = ()
) -> list[tuple[str, str]]:
    """The (site, camera) pairs of ``found`` that are asked for (empty: no filter). A camera or site asked for
    that is not there is an error listing what is, rather than a report on nothing that reads as all well."""
    chosen = [(s, c) for s, c in found if (not cameras or c in cameras) and (not sites or s in sites)]
    missing = [f"site {s!r}" for s in sites if all(s != ss for ss, _c in found)]
    missing += [f"camera {c!r}" for c in cameras if all(c != cc for _s, cc in chosen)]
    if missing:
        held = ", ".join(f"{s}/{c}" for s, c in found) or "no cameras"
        raise ArchiveError(f"archive {root}: no {' and no '.join(missing)} there; it holds {held}")
    return chosen


def info(root: Path, cameras: Collection[str] = (), sites: Collection[str] = ()) -> list[CameraInfo]:
    check_version(root, create=False)
    return [
        camera_info(root, site, camera) for site, camera in select(root, find_cameras(root), cameras, sites)
    ]


@dataclass(slots=True)
class VerifyReport:
    cameras: int = 0
    records: int = 0
    decoded: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Harmless findings, e.g. an unindexed tail the next writer will re-index."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    root: Path,
    on_record: Callable[[], None] | None = None,
    jobs: int = 1,
    cameras: Collection[str] = (),
    sites: Collection[str] = (),
    span: tuple[int | None, int | None] = (None, None),
) -> VerifyReport:
    """Decode every indexed record of every camera and check its frame hash; collect what is wrong.

    ``jobs`` > 1 verifies that many cameras at once, each in its own process: a camera's records decode as
    one chain from each key, so a camera is the unit (a 1080p still takes about 37 ms to decode on the team's
    VM: one camera filming a frame a second for a day is most of an hour of one core). The report is the same,
    in camera order.
    ``cameras`` and ``sites``: only those (:func:`select`). ``span``: only the records captured in
    [start, end) ns (None: unbounded), each still decoded from its key, however long before the span that is.
    """
    report = VerifyReport()
    try:
        check_version(root, create=False)
    except CctvError as e:
        report.problems.append(str(e))
        return report
    chosen = select(root, find_cameras(root, include_unindexed=True), cameras, sites)
    report.cameras = len(chosen)
    if jobs <= 1 or len(chosen) <= 1:
        for site, camera in chosen:
            _verify_one_into(root, site, camera, report, on_record, span)
        return report
    context = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    seen = context.Value("q", 0)
    workers = min(jobs, len(chosen))
    threads = max(
        1, native.THREADS // workers
    )  # the CPUs shared out: a worker decodes planes on fewer threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_setup, initargs=(seen, threads)
    ) as pool:
        futures = [pool.submit(_verify_one, root, site, camera, span) for site, camera in chosen]
        shown = 0
        while True:
            done, _ = wait(futures, timeout=0.2)
            if on_record is not None:
                for _ in range(seen.value - shown):
                    on_record()
                shown = seen.value
            if len(done) == len(futures):
                break
        for future in futures:
            part = future.result()
            report.records += part.records
            report.decoded += part.decoded
            report.problems += part.problems
            report.notes += part.notes
    return report


_seen: Any = None
"""In a worker process of ``verify``: the shared count of records looked at, for the parent's progress."""


def _worker_setup(seen: Any, threads: int) -> None:
    global _seen
    _seen = seen
    native.THREADS = threads


def _count_one() -> None:
    with _seen.get_lock():
        _seen.value += 1


def _verify_one(root: Path, site: str, camera: str, span: tuple[int | None, int | None]) -> VerifyReport:
    """One camera's part of the report (in a worker process)."""
    part = VerifyReport()
    _verify_one_into(root, site, camera, part, _count_one if _seen is not None else None, span)
    return part


def _verify_one_into(
    root: Path,
    site: str,
    camera: str,
    report: VerifyReport,
    on_record: Callable[[], None] | None,
    span: tuple[int | None, int | None],
) -> None:
    try:
        _verify_camera(root, site, camera, report, on_record, span)
    except CctvError as e:
        report.problems.append(f"{site}/{camera}: {e}")


def _verify_camera(
    root: Path,
    site: str,
    camera: str,
    report: VerifyReport,
    on_record: Callable[[], None] | None,
    span: tuple[int | None, int | None],
) -> None:
    where = f"{site}/{camera}"
    with CameraReader(root, site, camera) as reader:
        for day, number, length in reader.conn.execute("SELECT day, number, length FROM segments"):
            path = reader.directory / day / f"segment-{number:06d}.cctv"
            size = path.stat().st_size if path.exists() else -1
            if size < 0:
                report.problems.append(f"{where}: segment {day}/{path.name} is missing")
            elif size < length:
                report.problems.append(
                    f"{where}: {day}/{path.name} is {size} bytes, the index names {length}"
                )
            elif size > length:
                report.notes.append(
                    f"{where}: {day}/{path.name} has {size - length} unindexed bytes at its end "
                    "(an interrupted write; the next writer re-indexes or truncates them)"
                )
        reconstructor = Reconstructor(reader)
        for row in reader.rows(*span):
            report.records += 1
            if on_record is not None:
                on_record()
            own = f"camera {camera!r} seq={row.seq}: "  # errors name the record; say it once
            if not row.decodable:
                try:
                    reader.read(row)
                except CctvError as e:
                    report.problems.append(f"{where} seq={row.seq} ({row.where}): {str(e).removeprefix(own)}")
                    continue
                report.problems.append(
                    f"{where} seq={row.seq} ({row.where}): undecodable, its reference chain is incomplete "
                    f"(needs seq={row.ref_seq})"
                )
                continue
            decoded = reconstructor.decode(row)
            if decoded.problem is not None:
                report.problems.append(
                    f"{where} seq={row.seq} ({row.where}): {decoded.problem.removeprefix(own)}"
                )
            else:
                report.decoded += 1
