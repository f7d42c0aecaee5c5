"""zlib's CRC-32 of any stretch of a long buffer, in time independent of the stretch's length.

Why: a damaged ``.cctv`` file is read by testing every magic after the damage as the start of a record
(:func:`agent.codec.cctv_file.scan_records`), and each candidate declares its own length. Checking each one's
CRC by reading all of it made the scan quadratic: a crafted 4 MB file of record headers that each claim the rest
of the file took 77 s, and the time grows with the square of the size. :class:`PrefixCrc` keeps the CRC of the
buffer's prefixes at every :data:`STEP` bytes, computed once as far as they are asked for, and combines two of
them (zlib's ``crc32_combine`` arithmetic, :func:`crc_shift`) so that a candidate costs at most two steps' bytes
however long it claims to be.
"""

from __future__ import annotations

import zlib
from array import array
from typing import Protocol

from agent.codec import native

STEP = 4096
"""Bytes between two stored prefix CRCs: a lookup reads at most this many; 1 kB of checkpoints a MB read."""

_POLY = 0xEDB88320


class Sliceable(Protocol):
    """``bytes`` or a read-only ``mmap``."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes: ...


def _multmodp(a: int, b: int) -> int:
    """a·b modulo the CRC polynomial, bits reflected (zlib's ``multmodp``)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def crc_shift_python(crc: int, nbytes: int) -> int:
    """:func:`crc_shift` without the compiled module (about 50 times slower)."""
    p, k = 1 << 31, 3  # x^0; the exponent 8·nbytes has its bits from 2^3 on
    while nbytes:
        if nbytes & 1:
            p = _multmodp(_X2N[k & 31], p)
        nbytes >>= 1
        k += 1
    return _multmodp(p, crc)


def crc_shift(crc: int, nbytes: int) -> int:
    """The CRC ``crc`` of a prefix A carried past ``nbytes`` more bytes: crc32(A + B) equals
    ``crc_shift(crc32(A), len(B)) ^ crc32(B)``."""
    if native.AVAILABLE:
        return native.crc_shift(crc, nbytes)
    return crc_shift_python(crc, nbytes)


class PrefixCrc:
    """The CRC-32 of ``data[start:end]`` for any ``start <= end``, from prefix CRCs stored every :data:`STEP`
    bytes. The stored ones are computed in order, once, as far as a lookup needs: all lookups together read
    ``data`` about once, however many there are."""

    def __init__(self, data: Sliceable) -> None:
        self._data = data
        self._checkpoints = array("I", [0])  # CRC of data[:k * STEP]

    def prefix(self, end: int) -> int:
        """crc32(data[:end])."""
        k = end // STEP
        points = self._checkpoints
        while len(points) <= k:
            j = len(points) - 1
            points.append(zlib.crc32(self._data[j * STEP : (j + 1) * STEP], points[j]))
        return zlib.crc32(self._data[k * STEP : end], points[k])

    def crc(self, start: int, end: int) -> int:
        """crc32(data[start:end])."""
        return self.prefix(end) ^ crc_shift(self.prefix(start), end - start)
