"""Hostile site and camera ids never reach the file system, and no path leaves the archive root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.archive import Archive, iter_frames, validate_id
from agent.archive.export import export
from agent.archive.paths import camera_dir, inside, utc_day
from agent.codec.encoder import FrameEncoder
from agent.codec.wire import pack_record
from agent.errors import ArchiveError

HOSTILE = [
    "../x",
    "/etc",
    "a/b",
    "+",
    "#",
    "*",
    "cam+1",
    "cam#",
    "\x00",
    "cam\x00",
    "a\nb",
    "\x7f",
    "..",
    ".",
    ".hidden",
    "a..b",
    "",
    "x" * 65,
    "a b",
    "caméra",
    "a\\b",
]
FINE = ["cam1", "x" * 64, "a.b", "site_2-north", "-", "0"]


def record(camera: str = "cam1") -> bytes:
    image = np.zeros((16, 16, 3), np.uint8)
    return pack_record(FrameEncoder(camera).encode(image, 1_700_000_000_000_000_000))


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_ids_are_refused(value: str) -> None:
    with pytest.raises(ArchiveError, match="invalid site id"):
        validate_id("site", value)


@pytest.mark.parametrize("value", FINE)
def test_plain_ids_are_accepted(value: str) -> None:
    assert validate_id("camera", value) == value


@pytest.mark.parametrize("site", HOSTILE)
def test_store_with_a_hostile_site_writes_nothing(tmp_path: Path, site: str) -> None:
    root = tmp_path / "root"
    with Archive(root) as archive, pytest.raises(ArchiveError, match="invalid site id"):
        archive.store(record(), site)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["VERSION", "root"]


@pytest.mark.parametrize("camera", ["../x", "/etc", "a/b", "..", ".hidden", "+", "x" * 65])
def test_readers_refuse_hostile_ids(tmp_path: Path, camera: str) -> None:
    with Archive(tmp_path) as archive:
        archive.store(record(), "site1")
    with pytest.raises(ArchiveError, match="invalid camera id"):
        list(iter_frames(tmp_path, camera))
    with pytest.raises(ArchiveError, match="invalid camera id"):
        export(tmp_path, camera, tmp_path / "out")
    with pytest.raises(ArchiveError, match="invalid site id"):
        list(iter_frames(tmp_path, "cam1", site=camera))


def test_camera_id_valid_on_the_wire_but_not_as_a_path_is_refused(tmp_path: Path) -> None:
    with Archive(tmp_path) as archive, pytest.raises(ArchiveError, match=r"invalid camera id 'a\.\.b'"):
        archive.store(record("a..b"), "site1")  # the wire format allows '..' inside an id


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    with Archive(root) as archive:
        (root / "evil").symlink_to(outside, target_is_directory=True)
        with pytest.raises(ArchiveError, match="outside the archive"):
            archive.store(record(), "evil")
    assert list(outside.iterdir()) == []
    with pytest.raises(ArchiveError, match="outside the archive"):
        camera_dir(root, "evil", "cam1")


def test_inside_accepts_the_root_and_below(tmp_path: Path) -> None:
    assert inside(tmp_path, tmp_path) == tmp_path.resolve()
    assert inside(tmp_path, tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    with pytest.raises(ArchiveError):
        inside(tmp_path / "a", tmp_path / "a" / ".." / "b")


@pytest.mark.parametrize(
    ("ns", "day"),
    [
        (0, "1970-01-01"),
        (-1, "1969-12-31"),
        (1_700_006_399_999_999_999, "2023-11-14"),
        (1_700_006_400 * 10**9, "2023-11-15"),
    ],
)
def test_utc_day(ns: int, day: str) -> None:
    assert utc_day(ns) == day
