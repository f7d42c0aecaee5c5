"""Wire format v1-v6: golden bytes pin the layout; hostile bytes raise only WireFormatError."""

from __future__ import annotations

import hashlib
import random
import re
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from agent.codec.wire import (
    FIXED_SIZE,
    VERSION,
    FrameHash,
    Kind,
    Limits,
    PixelFormat,
    Record,
    RecordHeader,
    Stage,
    hash_pixels,
    pack_record,
    record_length,
    unpack_record,
)
from agent.errors import WireFormatError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _header(**changes: object) -> RecordHeader:
    fields: dict[str, object] = {
        "camera_id": "cam1",
        "seq": 5,
        "key_seq": 4,
        "ref_seq": 4,
        "kind": Kind.MEMBER,
        "capture_time_ns": 1_700_000_000_123_456_789,
        "width": 2,
        "height": 1,
        "pixel_format": PixelFormat.GRAY8,
        "stages": (Stage.RESIDUAL, Stage.ZSTD),
        "frame_hash": hashlib.sha256(b"\x01\x02").digest(),
        "tolerance": 0,
        "ssim": 0.75,
        "clock_synced": True,
        "hash_kind": FrameHash.SHA256,
    }
    fields.update(changes)
    return RecordHeader(**fields)  # type: ignore[arg-type]


GOLDEN_HEX = "".join(
    [
        "43435456",  # magic "CCTV"
        "01",  # version 1
        "01",  # kind: member
        "01",  # flags: clock synchronised
        "01",  # pixel format gray8
        "5f00",  # header length 95 = 88 + 1 + len("cam1") + 2 stages
        "0200",  # width 2
        "0100",  # height 1
        "00",  # tolerance 0
        "02",  # two stages
        "03000000",  # payload length 3
        "0500000000000000",  # seq 5
        "0400000000000000",  # key_seq 4
        "0400000000000000",  # ref_seq 4
        struct.pack("<q", 1_700_000_000_123_456_789).hex(),  # capture time
        struct.pack("<f", 0.75).hex(),  # ssim
        hashlib.sha256(b"\x01\x02").hexdigest(),  # frame hash
        "04",  # camera id length
        b"cam1".hex(),
        "0107",  # stages RESIDUAL, ZSTD
        "abcdef",  # payload
    ]
)


def test_golden_bytes_pin_the_layout() -> None:
    body = bytes.fromhex(GOLDEN_HEX)
    assert len(body) == FIXED_SIZE + 1 + 4 + 2 + 3
    assert body[8:10] == struct.pack("<H", FIXED_SIZE + 1 + 4 + 2)
    expected = body + struct.pack("<I", zlib.crc32(body))
    record = Record(_header(), b"\xab\xcd\xef")
    assert pack_record(record) == expected
    assert unpack_record(expected) == record
    assert record_length(expected) == len(expected)


XXH3_OF_0102 = "d2f0f9428898845f08130b77ddef5807"
"""XXH3-128 (seed 0) of the bytes 01 02, canonical byte order; the empty input's is xxHash's published test vector."""


def test_golden_bytes_pin_version_3_and_its_frame_hash() -> None:
    assert hash_pixels(b"", FrameHash.XXH3_128).hex() == "99aa06d3014798d86001c324468d497f" + "00" * 16
    field = hash_pixels(b"\x01\x02", FrameHash.XXH3_128)
    assert field.hex() == XXH3_OF_0102 + "00" * 16
    sha_hex = hashlib.sha256(b"\x01\x02").hexdigest()
    body = bytes.fromhex(
        GOLDEN_HEX.replace("43435456" + "01", "43435456" + "03", 1).replace(sha_hex, field.hex())
    )
    assert body[4] == 3
    assert len(body) == FIXED_SIZE + 1 + 4 + 2 + 3
    expected = body + struct.pack("<I", zlib.crc32(body))
    record = Record(_header(frame_hash=field, hash_kind=FrameHash.XXH3_128), b"\xab\xcd\xef")
    assert pack_record(record) == expected
    assert unpack_record(expected) == record


GOLDEN_V5_HEX = "".join(
    [
        "43435456",  # magic "CCTV"
        "05",  # version 5
        "01",  # kind: member
        "01",  # flags: clock synchronised
        "03",  # pixel format bgr8
        "6000",  # header length 96 = 88 + 1 + len("cam1") + 3 stages
        "0200",  # width 2
        "0100",  # height 1
        "02",  # tolerance 2
        "03",  # three stages
        "03000000",  # payload length 3
        "0500000000000000",  # seq 5
        "0400000000000000",  # key_seq 4
        "0400000000000000",  # ref_seq 4
        struct.pack("<q", 1_700_000_000_123_456_789).hex(),  # capture time
        struct.pack("<f", 0.75).hex(),  # ssim
        XXH3_OF_0102 + "00" * 16,  # frame hash: XXH3-128, then 16 zero bytes
        "04",  # camera id length
        b"cam1".hex(),
        "090b08",  # stages RESIDUAL_QG, MED_CHROMA, CTX
        "abcdef",  # payload
    ]
)


def _pins_a_colour_record(body: bytes, stages: tuple[Stage, ...], version: int) -> None:
    """``body`` (a CRC short) is the T=2 member with ``stages``, and one version lower it is refused."""
    expected = body + struct.pack("<I", zlib.crc32(body))
    header = _header(
        pixel_format=PixelFormat.BGR8,
        stages=stages,
        tolerance=2,
        frame_hash=hash_pixels(b"\x01\x02", FrameHash.XXH3_128),
        hash_kind=FrameHash.XXH3_128,
    )
    record = Record(header, b"\xab\xcd\xef")
    assert pack_record(record) == expected
    assert unpack_record(expected) == record
    older = bytearray(expected)
    older[4] = version - 1
    older[-4:] = struct.pack("<I", zlib.crc32(older[:-4]))
    with pytest.raises(WireFormatError, match=f"need wire format version {version}"):
        unpack_record(bytes(older))


def test_golden_bytes_pin_version_5_and_its_stages() -> None:
    """Stages 9-11 (B and R following G's quantisation, MED on the chroma planes) need version 5; a record
    that lists them under an older version is refused, so a v4 reader never misreads one."""
    body = bytes.fromhex(GOLDEN_V5_HEX)
    assert len(body) == FIXED_SIZE + 1 + 4 + 3 + 3
    _pins_a_colour_record(body, (Stage.RESIDUAL_QG, Stage.MED_CHROMA, Stage.CTX), 5)


def test_golden_bytes_pin_version_6_and_its_stage() -> None:
    """Stage 12 (the chroma laid out by 2×2 block) needs version 6; listed under version 5 it is refused."""
    body = bytes.fromhex(
        GOLDEN_V5_HEX.replace("43435456" + "05", "43435456" + "06", 1)
        .replace("6000", "6100", 1)  # header length 97: one stage more
        .replace("0203", "0204", 1)  # tolerance 2, four stages
        .replace("090b08", "090c0b08", 1)  # stages RESIDUAL_QG, BLOCK_CHROMA, MED_CHROMA, CTX
    )
    assert len(body) == FIXED_SIZE + 1 + 4 + 4 + 3
    _pins_a_colour_record(body, (Stage.RESIDUAL_QG, Stage.BLOCK_CHROMA, Stage.MED_CHROMA, Stage.CTX), 6)


def test_a_version_3_frame_hash_must_end_in_zeros() -> None:
    field = bytearray(hash_pixels(b"\x01\x02", FrameHash.XXH3_128))
    field[31] = 1
    with pytest.raises(WireFormatError, match="16 zero bytes"):
        pack_record(Record(_header(frame_hash=bytes(field), hash_kind=FrameHash.XXH3_128), b""))
    # The same bytes on the wire: a SHA-256 record whose version byte (and CRC) were rewritten to 3.
    data = bytearray(pack_record(Record(_header(frame_hash=bytes(field)), b"")))
    data[4] = 3
    data[-4:] = struct.pack("<I", zlib.crc32(data[:-4]))
    with pytest.raises(WireFormatError, match="16 zero bytes"):
        unpack_record(bytes(data))


def test_docs_state_the_version_the_code_speaks() -> None:
    text = DOCS.read_text()
    match = re.search(r"^Version: (\d+)$", text, re.MULTILINE)
    assert match, "docs/wire-format.md must state 'Version: N'"
    assert int(match.group(1)) == VERSION
    for stage in Stage:
        assert f"| {stage.value} | {stage.name} |" in text, f"stage {stage.name} is not documented"


def test_key_and_member_round_trip_with_all_fields() -> None:
    key = Record(
        _header(
            seq=9,
            key_seq=9,
            ref_seq=9,
            kind=Kind.KEY,
            stages=(Stage.RCT, Stage.MED, Stage.ZSTD),
            pixel_format=PixelFormat.BGR8,
            clock_synced=False,
            ssim=1.0,
            tolerance=3,
        ),
        b"x" * 100,
    )
    assert unpack_record(pack_record(key)) == key


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": Kind.KEY}, "key record must not reference"),
        ({"ref_seq": 5}, "references seq=5, not earlier"),
        ({"stages": (Stage.ZSTD, Stage.RESIDUAL)}, "out of order"),
        ({"stages": (Stage.RCT,)}, "RCT needs a BGR frame"),
        ({"stages": (Stage.QUANTIZE,)}, "needs tolerance"),
        ({"stages": (Stage.RESIDUAL_QG, Stage.CTX), "tolerance": 2}, "RESIDUAL_QG needs a BGR frame"),
        (
            {"stages": (Stage.QUANTIZE_G,), "tolerance": 2, "kind": Kind.KEY, "key_seq": 5, "ref_seq": 5},
            "BGR",
        ),
        ({"stages": (Stage.MED_CHROMA,), "ref_seq": 5}, "MED_CHROMA needs a BGR frame"),
        (
            {"stages": (Stage.RESIDUAL_QG, Stage.CTX), "pixel_format": PixelFormat.BGR8},
            "needs tolerance",
        ),
        (
            {"stages": (Stage.RESIDUAL_QG, Stage.RCT), "pixel_format": PixelFormat.BGR8, "tolerance": 1},
            "their own colour transform",
        ),
        (
            {"stages": (Stage.RESIDUAL, Stage.MED, Stage.MED_CHROMA), "pixel_format": PixelFormat.BGR8},
            "out of order",
        ),
        ({"stages": (Stage.RESIDUAL, Stage.RESIDUAL_QG), "pixel_format": PixelFormat.BGR8}, "out of order"),
        ({"stages": (Stage.RESIDUAL, Stage.BLOCK_CHROMA)}, "BLOCK_CHROMA needs a BGR frame"),
        (
            {"stages": (Stage.RESIDUAL, Stage.BLOCK_CHROMA, Stage.CTX), "pixel_format": PixelFormat.BGR8},
            "BLOCK_CHROMA needs the chroma planes of RCT",
        ),
        (
            {
                "stages": (Stage.RESIDUAL, Stage.RCT, Stage.MED, Stage.BLOCK_CHROMA),
                "pixel_format": PixelFormat.BGR8,
            },
            "out of order",
        ),
        (
            {"stages": (Stage.RESIDUAL, Stage.BLOCK_CHROMA, Stage.RCT), "pixel_format": PixelFormat.BGR8},
            "out of order",
        ),
        ({"stages": (Stage.JPEG_CHROMA, Stage.CTX), "ref_seq": 5}, "JPEG_CHROMA needs a BGR frame"),
        (
            {
                "stages": (Stage.RCT, Stage.JPEG_CHROMA, Stage.CTX),
                "pixel_format": PixelFormat.BGR8,
                "ref_seq": 5,
            },
            "out of order",
        ),
        (
            {"stages": (Stage.RESIDUAL, Stage.JPEG_CHROMA, Stage.CTX), "pixel_format": PixelFormat.BGR8},
            "codes a frame on its own, exactly or after QUANTIZE_G",
        ),
        (
            {"stages": (Stage.JPEG_CHROMA, Stage.MED_CHROMA), "pixel_format": PixelFormat.BGR8, "ref_seq": 5},
            "codes a frame on its own, exactly or after QUANTIZE_G",
        ),
        (
            {
                "stages": (Stage.QUANTIZE, Stage.JPEG_CHROMA),
                "pixel_format": PixelFormat.BGR8,
                "ref_seq": 5,
                "tolerance": 2,
            },
            "codes a frame on its own, exactly or after QUANTIZE_G",
        ),
        (
            {
                "stages": (Stage.JPEG_CHROMA, Stage.BLOCK_CHROMA),
                "pixel_format": PixelFormat.BGR8,
                "ref_seq": 5,
            },
            "BLOCK_CHROMA needs the chroma planes of RCT",
        ),
        (
            {
                "stages": (Stage.JPEG_CHROMA, Stage.CTX),
                "pixel_format": PixelFormat.BGR8,
                "ref_seq": 5,
                "width": 9,
            },
            "even width and height",
        ),
        ({"camera_id": "../etc"}, "invalid camera id"),
        ({"width": 0}, "width 0"),
    ],
)
def test_inconsistent_headers_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        pack_record(Record(_header(**changes), b""))


def test_limits_are_checked_before_allocation() -> None:
    big = Record(_header(width=4000, height=4000, pixel_format=PixelFormat.BGR8), b"")
    data = pack_record(big)
    with pytest.raises(WireFormatError, match="exceeds the limit"):
        unpack_record(data, Limits(max_frame_bytes=1024 * 1024))


def test_corruption_truncation_and_version_are_reported() -> None:
    data = pack_record(Record(_header(), b"abc"))
    with pytest.raises(WireFormatError, match="checksum"):
        unpack_record(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(WireFormatError, match="declares"):
        unpack_record(data[:-1])
    with pytest.raises(WireFormatError, match="truncated"):
        unpack_record(data[:10])
    with pytest.raises(WireFormatError, match="version"):
        unpack_record(data[:4] + bytes([VERSION + 1]) + data[5:])
    with pytest.raises(WireFormatError, match="magic"):
        unpack_record(b"XXXX" + data[4:])


def test_ten_thousand_mutations_raise_only_wire_format_error() -> None:
    """Flip, insert, delete and overwrite bytes, with and without a fixed-up CRC."""
    rng = random.Random(1234)
    header = _header(seq=50, key_seq=40, ref_seq=49)
    v3 = replace(
        header, frame_hash=hash_pixels(b"\x01\x02", FrameHash.XXH3_128), hash_kind=FrameHash.XXH3_128
    )
    v5 = replace(
        v3,
        pixel_format=PixelFormat.BGR8,
        stages=(Stage.RESIDUAL_QG, Stage.MED_CHROMA, Stage.CTX),
        tolerance=2,
    )
    v6 = replace(v5, stages=(Stage.RESIDUAL_QG, Stage.BLOCK_CHROMA, Stage.MED_CHROMA, Stage.CTX))
    bases = [pack_record(Record(h, bytes(range(200)))) for h in (header, v3, v5, v6)]
    assert [b[4] for b in bases] == [1, 3, 5, 6]
    outcomes = {"ok": 0, "error": 0}
    for i in range(10_000):
        data = bytearray(bases[(i // 2) % 4])
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[pos] = rng.randrange(256)
            elif op == 2:
                del data[pos : pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        if i % 2 and len(data) > 4:  # half the time fix the CRC so parsing goes past the checksum
            data[-4:] = struct.pack("<I", zlib.crc32(data[:-4]))
        try:
            unpack_record(bytes(data))
            outcomes["ok"] += 1
        except WireFormatError:
            outcomes["error"] += 1
    assert outcomes["error"] > 9000
