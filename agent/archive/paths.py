"""Where things live in the archive, and the checks that keep every path inside its root.

Site ids come from MQTT topics and camera ids from records: both are untrusted. An id is accepted only if it
is a plain file name (``[A-Za-z0-9_.-]``, 1–64 characters, no leading dot, no ``..``), and every path built
from ids is resolved (following symlinks) and refused unless it stays under the resolved root.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import ArchiveError

FORMAT_VERSION = 1
"""Version of the on-disk layout; ``docs/archive-format.md`` states the same number (a test checks it)."""

VERSION_FILE = "VERSION"
INDEX_FILE = "index.sqlite"
LOCK_FILE = ".writer.lock"
SEGMENT_SUFFIX = ".cctv"
MAX_ID = 64

_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SEGMENT_RE = re.compile(r"segment-(\d{6,})\.cctv")
_NS = 1_000_000_000


def validate_id(kind: str, value: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise ArchiveError naming ``kind``."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None or ".." in value:
        raise ArchiveError(
            f"invalid {kind} id {value!r}: use 1–{MAX_ID} characters of [A-Za-z0-9_.-], "
            "not starting with '.' and without '..'"
        )
    return value


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, or ArchiveError if it escapes the (resolved) ``root``, e.g. through a symlink."""
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and not resolved.is_relative_to(resolved_root):
        raise ArchiveError(f"archive {root}: path {path} resolves to {resolved}, outside the archive")
    return resolved


def camera_dir(root: Path, site: str, camera: str) -> Path:
    """``ROOT/<site>/<camera>``, validated and resolved inside ``root``."""
    return inside(root, root / validate_id("site", site) / validate_id("camera", camera))


def utc_day(capture_time_ns: int) -> str:
    """The UTC calendar day (``YYYY-MM-DD``) a record belongs to."""
    return datetime.fromtimestamp(capture_time_ns // _NS, UTC).strftime("%Y-%m-%d")


def segment_name(number: int) -> str:
    return f"segment-{number:06d}{SEGMENT_SUFFIX}"


def segment_path(camera_directory: Path, day: str, number: int) -> Path:
    if _DAY_RE.fullmatch(day) is None:
        raise ArchiveError(f"{camera_directory}: invalid day directory {day!r}")
    return camera_directory / day / segment_name(number)


def parse_segment(path: Path) -> tuple[str, int] | None:
    """(day, number) of a segment file found on disk, or None for anything else."""
    match = _SEGMENT_RE.fullmatch(path.name)
    if match is None or _DAY_RE.fullmatch(path.parent.name) is None:
        return None
    return path.parent.name, int(match.group(1))


def check_version(root: Path, create: bool) -> None:
    """Refuse a root written in another layout version; write ``VERSION`` into a new one."""
    version_file = root / VERSION_FILE
    try:
        text = version_file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not create:
            raise ArchiveError(f"archive {root}: no {VERSION_FILE} file, not an archive") from None
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{VERSION_FILE}.tmp"
        tmp.write_text(f"{FORMAT_VERSION}\n", encoding="ascii")
        tmp.replace(version_file)
        return
    except (OSError, UnicodeDecodeError) as e:
        raise ArchiveError(f"archive {root}: cannot read {VERSION_FILE}: {e}") from e
    if text != str(FORMAT_VERSION):
        raise ArchiveError(
            f"archive {root}: layout version {text!r}, this code reads version {FORMAT_VERSION}"
        )


def find_cameras(root: Path, include_unindexed: bool = False) -> list[tuple[str, str]]:
    """Every (site, camera) that has an index under ``root`` (or only segments, if asked), sorted."""
    found = {(p.parent.parent.name, p.parent.name) for p in root.glob(f"*/*/{INDEX_FILE}")}
    if include_unindexed:
        found.update(
            (p.parents[2].name, p.parents[1].name) for p in root.glob(f"*/*/*/segment-*{SEGMENT_SUFFIX}")
        )
    valid = []
    for site, camera in found:
        try:
            validate_id("site", site)
            validate_id("camera", camera)
        except ArchiveError:
            continue
        valid.append((site, camera))
    return sorted(valid)
