"""On-disk primitives of the spool: the record file layout and the atomic, durable write.

Kept apart from the queue logic so that the crash-safety argument can be read in one place: a file under its
final name was fsynced before it got that name, and the name itself was fsynced into the directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from agent.durable import fsync_dir, write_synced

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".rec"
TMP_SUFFIX = ".tmp"
FILE_MODE = 0o600  # frames of a camera are private: only the agent's user may read them

_MAGIC = b"CSPL"
_VERSION = 1
_FLAG_KEY = 0x01
# magic, version, flags, reserved, seq, key_seq, data length, CRC-32 of data; then CRC-32 of those 32 bytes.
_HEADER = struct.Struct("<4sBBHQQII")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
MAX_DATA = 2**32 - 1


class BadRecordFile(Exception):
    """A record file is truncated or corrupt; internal to the spool, which drops such files."""


@dataclass(frozen=True, slots=True)
class RecordHeader:
    seq: int
    key_seq: int
    is_key: bool
    data_len: int
    data_crc: int

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.data_len


def record_name(seq: int) -> str:
    """Zero-padded so that a plain ``ls`` lists records in replay order."""
    return f"{seq:020d}{RECORD_SUFFIX}"


def encode_header(seq: int, key_seq: int, is_key: bool, data: bytes) -> bytes:
    head = _HEADER.pack(
        _MAGIC, _VERSION, _FLAG_KEY if is_key else 0, 0, seq, key_seq, len(data), zlib.crc32(data)
    )
    return head + _HEADER_CRC.pack(zlib.crc32(head))


def decode_header(raw: bytes, where: Path) -> RecordHeader:
    if len(raw) < HEADER_SIZE:
        raise BadRecordFile(f"{where}: {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header")
    head = raw[: _HEADER.size]
    (crc,) = _HEADER_CRC.unpack_from(raw, _HEADER.size)
    if zlib.crc32(head) != crc:
        raise BadRecordFile(f"{where}: header checksum mismatch")
    magic, version, flags, _reserved, seq, key_seq, data_len, data_crc = _HEADER.unpack(head)
    if magic != _MAGIC or version != _VERSION:
        raise BadRecordFile(f"{where}: not a spool record (magic {magic!r}, version {version})")
    return RecordHeader(seq, key_seq, bool(flags & _FLAG_KEY), data_len, data_crc)


def read_header(path: Path) -> RecordHeader:
    """Check what can be checked without reading the payload: header, name and length.

    A torn write shows up as a short file, which this catches; payload bit rot is caught by
    :func:`read_data` when the record is read for publishing, so that opening a large spool stays fast.
    """
    with path.open("rb") as f:
        raw = f.read(HEADER_SIZE)
        size = os.fstat(f.fileno()).st_size
    header = decode_header(raw, path)
    if path.name != record_name(header.seq):
        raise BadRecordFile(f"{path}: header says seq={header.seq}")
    if size != header.file_size:
        raise BadRecordFile(f"{path}: {size} bytes, header promises {header.file_size}")
    return header


def read_data(path: Path) -> tuple[RecordHeader, bytes]:
    """Raises FileNotFoundError if the record went away meanwhile (acknowledged or evicted)."""
    raw = path.read_bytes()
    header = decode_header(raw, path)
    data = raw[HEADER_SIZE:]
    if len(data) != header.data_len:
        raise BadRecordFile(f"{path}: {len(data)} payload bytes, header promises {header.data_len}")
    if zlib.crc32(data) != header.data_crc:
        raise BadRecordFile(f"{path}: payload checksum mismatch")
    return header, data


def atomic_write(path: Path, *chunks: bytes) -> None:
    """Write ``path`` so that after a crash it holds either nothing new or all of ``chunks``.

    Temp file in the same directory, fsync, ``os.replace``, fsync of the directory (persist-queue style).
    On failure the temp file is removed and the ``OSError`` propagates with its errno, so that callers can
    tell a full disk (ENOSPC, EDQUOT) from anything else.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        write_synced(tmp, *chunks, mode=FILE_MODE)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def scan(directory: Path) -> tuple[list[RecordHeader], list[int]]:
    """Clear what a crash can leave in ``directory``; return the intact records and the seqs of torn ones.

    A temp file is a write that never reached ``os.replace``, so its put() never returned: it goes. A record
    file failing its header or length check goes too (logged), and its seq is reported so that the caller can
    drop the records that depend on it. Other files (state, counters, lock) are left alone.
    """
    intact: list[RecordHeader] = []
    torn: list[int] = []
    for path in sorted(directory.iterdir()):
        if path.name.endswith(TMP_SUFFIX):
            log.warning("spool %s: dropping half-written %s", directory, path.name)
            unlink_quietly(path)
        elif path.name.endswith(RECORD_SUFFIX):
            try:
                intact.append(read_header(path))
            except BadRecordFile as e:
                log.warning("spool %s: dropping torn record: %s", directory, e)
                unlink_quietly(path)
                if path.stem.isdigit():
                    torn.append(int(path.stem))
    intact.sort(key=lambda h: h.seq)
    return intact, torn


def unlink_quietly(path: Path) -> None:
    """Removal that cannot fail a caller: a leftover file is re-examined at the next open anyway."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.error("spool %s: cannot remove %s: %s", path.parent, path.name, e.strerror or e)


def read_json(path: Path) -> object:
    """The parsed file, or None if it does not exist; ValueError if it is not JSON."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
