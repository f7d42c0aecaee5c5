"""The CRC of a stretch from two prefix CRCs (``agent.codec.crc``): what keeps a damaged file's scan linear."""

from __future__ import annotations

import mmap
import random
import zlib
from pathlib import Path

import pytest

from agent.codec import native
from agent.codec.crc import STEP, PrefixCrc, crc_shift, crc_shift_python


def _shifts() -> list[object]:
    compiled = pytest.param(
        native.crc_shift, marks=pytest.mark.skipif(not native.AVAILABLE, reason="the extension is not built")
    )
    return [compiled, crc_shift_python, crc_shift]


@pytest.mark.parametrize("shift", _shifts())
def test_crc_shift_combines_as_zlib_does(shift: object) -> None:
    assert callable(shift)
    rng = random.Random(7)
    for length in [0, 1, 2, 3, 4, 7, 8, 255, 256, 4095, 4096, 65_537, 1_000_003]:
        a = rng.randbytes(rng.randrange(0, 64))
        b = rng.randbytes(length)
        assert shift(zlib.crc32(a), len(b)) ^ zlib.crc32(b) == zlib.crc32(a + b), length
    # Lengths too long to build: the shift by m then by n is the shift by m + n.
    for m, n in [(2**33, 5), (2**40 + 3, 2**35), (2**63, 2**63 - 1)]:
        crc = rng.getrandbits(32)
        assert shift(shift(crc, m), n) == shift(crc, m + n) == crc_shift_python(crc, m + n)


def test_prefix_crc_gives_every_stretch_crc(tmp_path: Path) -> None:
    rng = random.Random(11)
    data = rng.randbytes(5 * STEP + 123)
    path = tmp_path / "data"
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for source in (data, mapped):
            crcs = PrefixCrc(source)
            edges = [0, 1, STEP - 1, STEP, STEP + 1, 3 * STEP, len(data) - 1, len(data)]
            edges += [rng.randrange(len(data) + 1) for _ in range(40)]
            for start in edges:
                for end in edges:
                    if start <= end:
                        assert crcs.crc(start, end) == zlib.crc32(data[start:end]), (start, end)
