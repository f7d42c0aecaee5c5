"""PackBits per row: golden bytes, round trips, a byte-loop oracle, Pillow as a second opinion, hostility."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.codec import packbits
from agent.codec.packbits import decode_rows, encode_rows
from agent.errors import WireFormatError

# --- oracle: the textbook byte loop, slow but obviously right


def ref_encode_row(row: bytes) -> bytes:
    """Runs of 3+ are repeats, so are runs of 2 between row edges and runs of 3+; 128k+1 ends 127 + 2."""
    runs: list[tuple[int, int]] = []  # (value, length)
    for value in row:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    out = bytearray()
    literal = bytearray()

    def flush() -> None:
        while literal:
            chunk = literal[:128]
            del literal[:128]
            out.append(len(chunk) - 1)
            out.extend(chunk)

    for k, (value, length) in enumerate(runs):
        long_before = k == 0 or runs[k - 1][1] >= 3
        long_after = k + 1 == len(runs) or runs[k + 1][1] >= 3
        if length == 1 or (length == 2 and not (long_before and long_after)):
            literal.extend([value] * length)
            continue
        flush()
        left = length
        while left:
            take = min(left, 128)
            if left - take == 1:
                take -= 1
            out += bytes([257 - take, value])
            left -= take
    flush()
    return bytes(out)


def ref_encode(data: bytes, row_bytes: int) -> bytes:
    return b"".join(ref_encode_row(data[r : r + row_bytes]) for r in range(0, len(data), row_bytes))


def ref_decode(data: bytes, row_bytes: int, rows: int) -> bytes | None:
    """The documented acceptance rules, one byte at a time; None where decode_rows must raise."""
    want = rows * row_bytes
    if len(data) > 2 * want + rows:
        return None
    out = bytearray()
    i = 0
    while len(out) < want:
        if i >= len(data):
            return None
        head = data[i]
        i += 1
        if head == 0x80:
            continue
        if head < 0x80:
            n = head + 1
            chunk = data[i : i + n]
            if len(chunk) < n:
                return None
        else:
            n = 257 - head
            if i >= len(data):
                return None
            chunk = data[i : i + 1] * n
        i += len(chunk) if head < 0x80 else 1
        if len(out) // row_bytes != (len(out) + n - 1) // row_bytes:
            return None
        out += chunk
    return bytes(out) if i == len(data) else None


# --- golden bytes

APPLE_IN = bytes.fromhex("AA AA AA 80 00 2A AA AA AA AA 80 00 2A 22 AA AA AA AA AA AA AA AA AA AA")
APPLE_OUT = bytes.fromhex("FE AA 02 80 00 2A FD AA 03 80 00 2A 22 F7 AA")


def test_apple_example_golden() -> None:
    assert encode_rows(APPLE_IN, len(APPLE_IN)) == APPLE_OUT
    assert decode_rows(APPLE_OUT, len(APPLE_IN), 1) == APPLE_IN


@pytest.mark.parametrize(
    ("data", "row_bytes", "packed"),
    [
        (bytes(128), 128, b"\x81\x00"),
        (bytes(129), 129, b"\x82\x00\xff\x00"),  # 127 + 2: a repeat packet cannot say 1
        (bytes(130), 130, b"\x81\x00\xff\x00"),
        (bytes(256), 256, b"\x81\x00\x81\x00"),
        (bytes(6), 3, b"\xfe\x00\xfe\x00"),  # runs never cross rows
        (b"\x07\x07", 2, b"\xff\x07"),  # a run of 2 alone in its row is a repeat packet
        (b"\x01\x02\x02\x03", 4, b"\x03\x01\x02\x02\x03"),  # ... but joins literals around it
        (b"\x01\x02\x02\x00\x00\x00", 6, b"\x02\x01\x02\x02\xfe\x00"),
        (b"\x01\x01\x02\x02", 4, b"\x03\x01\x01\x02\x02"),  # and other runs of 2
        (bytes(3) + b"\x05\x05" + bytes(3), 8, b"\xfe\x00\xff\x05\xfe\x00"),  # between runs it repeats
        (b"\x05\x06\x07", 1, b"\x00\x05\x00\x06\x00\x07"),  # rows of one byte
        (bytes(range(129)), 129, b"\x7f" + bytes(range(128)) + b"\x00\x80"),
        (b"\x09" + bytes(3) + b"\x09", 5, b"\x00\x09\xfe\x00\x00\x09"),
        (b"", 7, b""),
    ],
)
def test_golden_bytes(data: bytes, row_bytes: int, packed: bytes) -> None:
    assert encode_rows(data, row_bytes) == packed
    assert decode_rows(packed, row_bytes, len(data) // row_bytes) == data


def test_decoder_accepts_what_we_never_emit() -> None:
    """No-op headers and 2-byte repeat packets, as other encoders write them."""
    assert decode_rows(b"\x80\xfe\xaa\x80\xff\x01\x80\x00\x02", 3, 2) == b"\xaa\xaa\xaa\x01\x01\x02"


def test_input_kinds() -> None:
    frame = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) // 7
    packed = encode_rows(frame, 15)
    assert encode_rows(frame.tobytes(), 15) == packed
    assert encode_rows(memoryview(frame.tobytes()), 15) == packed
    assert encode_rows(bytearray(frame.tobytes()), 15) == packed
    view = np.zeros((4, 10, 3), dtype=np.uint8)
    view[:, ::2] = frame
    assert encode_rows(view[:, ::2], 15) == packed  # strided arrays are read in C order
    assert decode_rows(memoryview(packed), 15, 4) == frame.tobytes()
    assert decode_rows(bytearray(packed), 15, 4) == frame.tobytes()


@pytest.mark.parametrize(
    ("data", "row_bytes", "message"),
    [
        (np.zeros(6, dtype=np.int16), 3, "uint8"),
        (bytes(6), 0, "row_bytes"),
        (bytes(7), 3, "whole number"),
    ],
)
def test_encoder_refuses_misuse(data: bytes | np.ndarray, row_bytes: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_rows(data, row_bytes)


# --- round trips and the oracle


@st.composite
def images(draw: st.DrawFn) -> tuple[bytes, int]:
    """Whole rows of bytes: uniform noise, a tiny alphabet (short runs), or long runs of few values."""
    row_bytes = draw(st.integers(1, 400))
    rows = draw(st.integers(0, 4))
    size = rows * row_bytes
    kind = draw(st.sampled_from(["noise", "alphabet", "runs"]))
    if kind == "noise":
        data = draw(st.binary(min_size=size, max_size=size))
    elif kind == "alphabet":
        data = bytes(draw(st.lists(st.sampled_from([0, 1, 255]), min_size=size, max_size=size)))
    else:
        runs = draw(st.lists(st.tuples(st.sampled_from([0, 3, 0x80]), st.integers(1, 400)), max_size=12))
        data = b"".join(bytes([value]) * length for value, length in runs).ljust(size, b"\x00")[:size]
    return data, row_bytes


@settings(max_examples=300, deadline=None)
@given(images())
def test_round_trip_and_oracle(image: tuple[bytes, int]) -> None:
    data, row_bytes = image
    rows = len(data) // row_bytes
    packed = encode_rows(data, row_bytes)
    assert packed == ref_encode(data, row_bytes)
    assert packbits.encode_rows_numpy(data, row_bytes) == packed
    assert decode_rows(packed, row_bytes, rows) == data
    assert len(packed) <= len(data) + rows * -(-row_bytes // 128)  # worst case: all literal


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((9, 300), dtype=np.uint8),
        np.full((3, 1000), 0xAB, dtype=np.uint8),
        np.tile(np.array([0, 1], dtype=np.uint8), (5, 301)),
        np.tile(np.array([4, 4, 9], dtype=np.uint8), (5, 259)),
        np.random.default_rng(7).integers(0, 256, (11, 387), dtype=np.uint8),
        np.arange(2000, dtype=np.uint8).reshape(1, 2000),
        np.repeat(np.arange(40, dtype=np.uint8), 257).reshape(8, 1285),  # runs of 128k+1 across rows
    ],
    ids=["zeros", "one-value", "alternating", "pairs-and-singles", "noise", "ramp", "runs-257"],
)
def test_structured_round_trip(frame: np.ndarray) -> None:
    packed = encode_rows(frame, frame.shape[1])
    assert packed == ref_encode(frame.tobytes(), frame.shape[1])
    assert packbits.encode_rows_numpy(frame, frame.shape[1]) == packed  # the fallback: the same bytes
    assert decode_rows(packed, frame.shape[1], frame.shape[0]) == frame.tobytes()


# --- Pillow (libtiff) as a second opinion


def pillow_strips(frame: np.ndarray) -> bytes:
    """The concatenated PackBits strips of Pillow's TIFF (each strip holds whole rows)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "TIFF", compression="packbits")
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        offsets, counts = image.tag_v2[273], image.tag_v2[279]
    raw = buffer.getvalue()
    return b"".join(raw[offset : offset + count] for offset, count in zip(offsets, counts, strict=True))


@pytest.mark.parametrize("channels", [1, 3])
def test_pillow_packbits_decodes_with_ours(channels: int) -> None:
    rng = np.random.default_rng(channels)
    frame = np.zeros((120, 97, channels), dtype=np.uint8)
    frame[rng.random(frame.shape) < 0.2] = 7
    frame[40:50] = rng.integers(0, 256, (10, 97, channels), dtype=np.uint8)
    frame = frame.squeeze(axis=2) if channels == 1 else frame
    packed = pillow_strips(frame)
    assert decode_rows(packed, 97 * channels, 120) == frame.tobytes()
    assert len(encode_rows(frame, 97 * channels)) <= len(packed)


# --- hostile input


@pytest.mark.parametrize(
    ("packed", "row_bytes", "rows", "message"),
    [
        (b"\x05\x01\x02", 6, 1, "truncated"),  # literal cut short
        (b"\xfe", 3, 1, "truncated"),  # repeat without its byte
        (b"\xfe\x00", 3, 2, "truncated"),  # a row missing
        (b"", 3, 1, "truncated"),
        (b"\x80\x80", 1, 1, "truncated"),
        (b"\xfd\x00", 3, 1, "past the end"),  # run of 4 into a 3-byte row
        (b"\x00\x01\x02\x01\x02\x03", 2, 2, "past the end"),  # literal straddling rows
        (b"\xfe\x00\x00", 3, 1, "trailing"),
        (b"\xfe\x00\x80", 3, 1, "trailing"),
        (b"\x00", 0, 5, "trailing"),
        (bytes(1000), 3, 1, "longer than any valid"),
        (b"\x00", -1, 1, "impossible"),
        (b"\x00", 1, -1, "impossible"),
    ],
)
def test_hostile_inputs_raise_wire_format_error(
    packed: bytes, row_bytes: int, rows: int, message: str
) -> None:
    with pytest.raises(WireFormatError, match=message):
        decode_rows(packed, row_bytes, rows)


def test_non_bytes_input_is_a_wire_format_error() -> None:
    with pytest.raises(WireFormatError, match="byte buffer"):
        decode_rows("abc", 1, 3)  # type: ignore[arg-type]


def test_huge_claimed_size_fails_without_allocating_it() -> None:
    with pytest.raises(WireFormatError, match="truncated"):
        decode_rows(b"\x81\x00" * 10, 10**9, 10**9)


def test_random_garbage_raises_only_wire_format_error() -> None:
    rng = np.random.default_rng(2024)
    accepted = 0
    for _ in range(2000):
        row_bytes, rows = int(rng.integers(1, 40)), int(rng.integers(0, 4))
        garbage = rng.integers(0, 256, int(rng.integers(0, 60)), dtype=np.uint8).tobytes()
        expected = ref_decode(garbage, row_bytes, rows)
        try:
            got = decode_rows(garbage, row_bytes, rows)
        except WireFormatError:
            assert expected is None, garbage.hex()
        else:
            accepted += 1
            assert got == expected
            assert len(got) == rows * row_bytes
    assert accepted  # some random streams are valid, and they must decode like the oracle says


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 20), st.integers(0, 4))
def test_decoder_agrees_with_oracle(packed: bytes, row_bytes: int, rows: int) -> None:
    expected = ref_decode(packed, row_bytes, rows) if row_bytes else (b"" if not packed else None)
    try:
        got = decode_rows(packed, row_bytes, rows)
    except WireFormatError:
        assert expected is None
    else:
        assert got == expected


@settings(max_examples=200, deadline=None)
@given(images(), st.data())
def test_corrupted_streams_raise_or_decode_to_full_size(
    image: tuple[bytes, int], data: st.DataObject
) -> None:
    raw, row_bytes = image
    rows = len(raw) // row_bytes
    packed = bytearray(encode_rows(raw, row_bytes))
    if packed:
        where = data.draw(st.integers(0, len(packed) - 1))
        packed[where] = data.draw(st.integers(0, 255))
        packed = packed[: data.draw(st.integers(0, len(packed) + 1))]
    try:
        got = decode_rows(bytes(packed), row_bytes, rows)
    except WireFormatError:
        return
    assert len(got) == rows * row_bytes


# --- a real residual


def two_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        ok_a, a = capture.read()
        ok_b, b = capture.read()
    finally:
        capture.release()
    assert ok_a, f"could not read a frame from {path}"
    assert ok_b, f"could not read a second frame from {path}"
    return a, b


def test_real_residual_round_trip(pets_cut: Path) -> None:
    a, b = two_frames(pets_cut)
    residual = np.subtract(b, a)  # uint8 wrap-around, as the codec forms residuals
    row_bytes = residual.shape[1] * residual.shape[2]
    packed = encode_rows(residual, row_bytes)
    assert decode_rows(packed, row_bytes, residual.shape[0]) == residual.tobytes()
    top = residual[:100].tobytes()  # several encoder blocks, small enough for the byte-loop oracle
    assert encode_rows(top, row_bytes) == ref_encode(top, row_bytes)
    assert packbits.encode_rows_numpy(residual, row_bytes) == packed
    assert len(packed) < residual.size
    assert len(packed) <= len(pillow_strips(residual))


@pytest.mark.parametrize(("block_bytes", "int32_limit"), [(1, 1 << 30), (100, 0), (4096, 1 << 30)])
def test_blocked_passes_match_the_oracle(
    block_bytes: int, int32_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder works in blocks of whole rows, indexing with int32 below a size; neither may show."""
    monkeypatch.setattr(packbits, "_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(packbits, "_INT32_LIMIT", int32_limit)
    rng = np.random.default_rng(block_bytes)
    frame = np.zeros((60, 70, 3), dtype=np.uint8)
    frame[rng.random(frame.shape) < 0.1] = 1
    frame[20:30] = rng.integers(0, 3, (10, 70, 3), dtype=np.uint8)
    packed = packbits.encode_rows_numpy(frame, 210)
    assert packed == ref_encode(frame.tobytes(), 210)
    assert decode_rows(packed, 210, 60) == frame.tobytes()
