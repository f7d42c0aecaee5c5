"""CTX against its specification: a decoder written only from docs/wire-format.md must read what the C writes.

A subscriber in another language has nothing but the document. So the decoder below follows its words step
by step (no code shared with ``agent/codec/_native.c``), and every payload the compiled encoder emits must
decode to the same planes with it as with the compiled decoder. Where they disagree, the document is wrong
or incomplete, and this file fails on purpose.
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.codec.native import ctx_decode, ctx_encode
from agent.codec.transforms import med
from agent.errors import WireFormatError

Planes = npt.NDArray[np.uint8]

# --- the decoder, from the document alone

TOTAL = 16384  # "14-bit frequencies": every table sums to exactly 2**14
LOW = 1 << 23  # "Each initial state must be ≥ 2²³"; renormalise "while X < 2²³"
THRESHOLDS = (1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128)
CONTEXTS = 16  # "context k (0..15)"
MAX_TABLES = 16  # "K, 0..16"


class _Reader:
    """Bytes taken in order; running out is the doc's "too few bytes", a corrupted record."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ValueError(
                f"too few bytes: need {n} at offset {self.pos}, have {len(self.data) - self.pos}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")  # "All integers are little-endian"


def _read_varint(reader: _Reader) -> int:
    """Unsigned LEB128: 7 bits a byte, low bits first, high bit on all but the last; at most 3 bytes."""
    value = 0
    for index in range(3):
        byte = reader.byte()
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if value > TOTAL:
                raise ValueError(f"frequency {value} > {TOTAL}")
            return value
    raise ValueError("frequency varint longer than 3 bytes")


def _read_table(reader: _Reader) -> list[int]:
    """256 frequencies from s = 0; after each 0 a byte z says how many more 0s are not written."""
    freqs: list[int] = []
    while len(freqs) < 256:
        f = _read_varint(reader)
        freqs.append(f)
        if f == 0:
            z = reader.byte()
            if len(freqs) + z > 256:
                raise ValueError(f"zero run of {z} runs past s = 255")
            freqs.extend([0] * z)
    if sum(freqs) != TOTAL:
        raise ValueError(f"table sums to {sum(freqs)}, not {TOTAL}")
    return freqs


def _magnitude(s: int) -> int:
    """|s|: s if s < 128, else 256 − s."""
    return s if s < 128 else 256 - s


def _context(symbols: list[list[int]], x: int, y: int) -> int:
    """k for the sample at (x, y), from the symbols already decoded (rows above, columns to the left)."""
    height, width = len(symbols), len(symbols[0])

    def mag(xx: int, yy: int) -> int:
        inside = 0 <= xx < width and 0 <= yy < height
        return _magnitude(symbols[yy][xx]) if inside else 0  # outside the plane counts 0

    act = 2 * mag(x - 1, y) + 2 * mag(x, y - 1) + mag(x - 1, y - 1) + mag(x + 1, y - 1)
    return sum(1 for t in THRESHOLDS if t <= act)  # how many of the thresholds are ≤ act


def _decode_plane(reader: _Reader, height: int, width: int) -> tuple[bytes, int]:
    """One coded plane: (its H·W values, K), K = 0 meaning it was stored."""
    centre = reader.byte()
    k_tables = reader.byte()
    if k_tables > MAX_TABLES:
        raise ValueError(f"K = {k_tables} > {MAX_TABLES}")
    if k_tables == 0:  # stored: H·W bytes, the plane's values row by row; nothing else
        return reader.take(height * width), 0
    table_map = list(reader.take(CONTEXTS))
    if any(m >= k_tables for m in table_map):
        raise ValueError(f"map entry ≥ K = {k_tables}: {table_map}")
    freqs = [_read_table(reader) for _ in range(k_tables)]
    # start[s] is the sum of the frequencies below s; start[256] = 16384 closes the last interval
    starts = [[sum(f[:s]) for s in range(257)] for f in freqs]
    length = reader.u32()
    if length < 16:
        raise ValueError(f"D = {length} < 16")
    coded = _Reader(reader.take(length))
    states = [coded.u32() for _ in range(4)]  # state 0 first
    if any(x < LOW for x in states):
        raise ValueError(f"initial state below 2**23: {states}")

    symbols = [[0] * width for _ in range(height)]
    values = bytearray()
    for y in range(height):
        for x in range(width):
            table = table_map[_context(symbols, x, y)]  # the neighbours it reads are all decoded already
            f, start = freqs[table], starts[table]
            state = states[x % 4]
            slot = state % TOTAL
            s = bisect_right(start, slot) - 1  # start[s] ≤ slot < start[s] + f[s] (skips f = 0)
            state = f[s] * (state // TOTAL) + slot - start[s]
            while state < LOW:
                state = state * 256 + coded.byte()
            states[x % 4] = state
            symbols[y][x] = s
            values.append((s + centre) % 256)
    if states != [LOW] * 4:
        raise ValueError(f"final states {states} are not all 2**23")
    if coded.pos != length:
        raise ValueError(f"{length - coded.pos} of the D = {length} coded bytes left unread")
    return bytes(values), k_tables


def _spec_decode_with_tables(
    payload: bytes, channels: int, height: int, width: int
) -> tuple[bytes, list[int]]:
    """The planes and each plane's K, so tests can tell which path (stored or coded) they exercised."""
    reader = _Reader(bytes(payload))
    out = bytearray()
    kinds = []
    for _ in range(channels):
        plane, k_tables = _decode_plane(reader, height, width)
        out += plane
        kinds.append(k_tables)
    if reader.pos != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.pos} bytes after the last plane")
    return bytes(out), kinds


def _spec_decode(payload: bytes, channels: int, height: int, width: int) -> bytes:
    """C planes of H×W bytes, plane by plane, row by row; ValueError on anything the doc calls corrupted."""
    return _spec_decode_with_tables(payload, channels, height, width)[0]


# --- an encoder, from the document too: payloads the compiled encoder would never write


def _leb128(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _write_table(freqs: list[int]) -> bytes:
    """Frequencies from s = 0, each 0 followed by the count of further 0s (which are not written)."""
    out = bytearray()
    s = 0
    while s < 256:
        out += _leb128(freqs[s])
        if freqs[s] == 0:
            z = 0
            while s + 1 + z < 256 and freqs[s + 1 + z] == 0:
                z += 1
            out.append(z)
            s += z
        s += 1
    return bytes(out)


def _scale(counts: list[int]) -> list[int]:
    """Counts to frequencies summing to 16384, every occurring symbol ≥ 1 (a context never seen: f[0] = 16384)."""
    total = sum(counts)
    if not total:
        return [TOTAL] + [0] * 255
    freqs = [max(1, c * TOTAL // total) if c else 0 for c in counts]
    freqs[freqs.index(max(freqs))] += TOTAL - sum(freqs)
    return freqs


def _spec_encode_plane(plane: Planes, centre: int) -> bytes:
    """One coded plane with 16 tables and the identity map, so every threshold decides a table.

    The compiled encoder merges adjacent contexts until a table has 4096 samples, so on planes small enough
    for this file it never shows whether the decoder puts act = 3 or act = 4 in the right context; a table
    per context does. rANS runs backwards: samples last to first, bytes pushed then reversed, so the
    decoder's "while X < 2²³: X ← X·256 + the next byte" reads them forwards.
    """
    height, width = plane.shape
    symbols = [[(int(v) - centre) % 256 for v in row] for row in plane]
    contexts = [[_context(symbols, x, y) for x in range(width)] for y in range(height)]
    counts = [[0] * 256 for _ in range(CONTEXTS)]
    for y in range(height):
        for x in range(width):
            counts[contexts[y][x]][symbols[y][x]] += 1
    freqs = [_scale(c) for c in counts]
    starts = [[sum(f[:s]) for s in range(256)] for f in freqs]
    states = [LOW] * 4
    pushed = bytearray()
    for y in reversed(range(height)):
        for x in reversed(range(width)):
            k, s = contexts[y][x], symbols[y][x]
            f, state = freqs[k][s], states[x % 4]
            while state >= (LOW // TOTAL) * 256 * f:  # so that the decoder's X lands back in [2²³, 2³¹)
                pushed.append(state & 0xFF)
                state >>= 8
            states[x % 4] = (state // f) * TOTAL + state % f + starts[k][s]
    coded = b"".join(x.to_bytes(4, "little") for x in states) + bytes(reversed(pushed))
    tables = b"".join(_write_table(f) for f in freqs)
    return bytes([centre, CONTEXTS, *range(CONTEXTS)]) + tables + len(coded).to_bytes(4, "little") + coded


# --- inputs


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _noise(shape: tuple[int, int, int], centre: int, spread: int, seed: int) -> Planes:
    """Small signed values around a centre, wrapped mod 256: what residuals look like."""
    values = centre + _rng(seed).integers(-spread, spread + 1, shape)
    return np.ascontiguousarray((values % 256).astype(np.uint8))


def _gradient(shape: tuple[int, int, int]) -> Planes:
    c, h, w = shape
    planes = np.add.outer(np.arange(c) * 40, np.add.outer(np.arange(h) * 3, np.arange(w) * 2))
    return np.ascontiguousarray((planes % 256).astype(np.uint8))


def _footage_crop(
    path: Path, frame_index: int = 0, top: int = 100, left: int = 200, height: int = 32, width: int = 48
) -> Planes:
    """A crop of a real BGR frame, as planes (B, G, R)."""
    capture = cv2.VideoCapture(str(path))
    try:
        for _ in range(frame_index + 1):
            ok, frame = capture.read()
            assert ok, f"could not read frame {frame_index} from {path}"
    finally:
        capture.release()
    crop = frame[top : top + height, left : left + width]
    planes: Planes = np.ascontiguousarray(crop.transpose(2, 0, 1))
    return planes


def _sparse(shape: tuple[int, int, int], values: list[int], weights: list[float], seed: int) -> Planes:
    """Values drawn from a few, so the table has long zero runs and a lone f = 0 (with z = 0) at s = 255."""
    chosen = _rng(seed).choice(np.array(values, dtype=np.uint8), size=shape, p=weights)
    return np.ascontiguousarray(chosen)


SYNTHETIC: dict[str, Planes] = {
    "zeros-1x1": np.zeros((1, 1, 1), dtype=np.uint8),
    "zeros-3x5x7": np.zeros((3, 5, 7), dtype=np.uint8),
    "constant-200": np.full((1, 17, 33), 200, dtype=np.uint8),  # one table, f[0] = 16384
    "random-1x1": _rng(1).integers(0, 256, (1, 1, 1), dtype=np.uint8),
    "random-1x17x33": _rng(2).integers(0, 256, (1, 17, 33), dtype=np.uint8),
    "random-3x24x40": _rng(3).integers(0, 256, (3, 24, 40), dtype=np.uint8),
    "noise-0-3x5x7": _noise((3, 5, 7), 0, 2, 4),
    "noise-0-1x17x33": _noise((1, 17, 33), 0, 3, 5),
    "noise-0-3x24x40": _noise((3, 24, 40), 0, 4, 6),
    "noise-128-3x24x40": _noise((3, 24, 40), 128, 4, 7),
    "wide-noise-3x24x40": _noise((3, 24, 40), 0, 60, 8),
    "narrow-2x9x1": _noise((2, 9, 1), 0, 2, 9),  # fewer columns than states: states 1-3 never move
    "narrow-1x6x3": _noise((1, 6, 3), 0, 2, 10),
    "sparse-0-1-2-254": _sparse((1, 17, 33), [0, 1, 2, 254], [0.7, 0.1, 0.1, 0.1], 0),
    "gradient-1x17x33": _gradient((1, 17, 33)),
    "gradient-3x24x40": _gradient((3, 24, 40)),
    "mixed-stored-and-coded": np.stack(
        [
            _rng(11).integers(0, 256, (24, 40), dtype=np.uint8),
            _noise((1, 24, 40), 0, 3, 12)[0],
            _noise((1, 24, 40), 128, 1, 13)[0],
        ]
    ),
}


def _check(planes: Planes) -> list[int]:
    """The spec decoder and the compiled one both give back the planes; returns each plane's K."""
    channels, height, width = planes.shape
    payload = ctx_encode(planes)
    assert len(payload) <= planes.size + 2 * channels  # "CTX never exceeds W·H·C + 2·C"
    decoded, kinds = _spec_decode_with_tables(payload, channels, height, width)
    assert decoded == planes.tobytes()
    assert ctx_decode(payload, channels, height, width).tobytes() == decoded
    return kinds


# --- the compiled encoder's bytes, read by the document


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_spec_decoder_reads_compiled_output(name: str) -> None:
    _check(np.ascontiguousarray(SYNTHETIC[name]))


def test_both_plane_kinds_are_exercised() -> None:
    """Random bytes cannot shrink, so they are stored (K = 0); residual-like noise is coded (K ≥ 1)."""
    assert _check(SYNTHETIC["random-3x24x40"]) == [0, 0, 0]
    assert all(k >= 1 for k in _check(SYNTHETIC["noise-0-3x24x40"]))
    stored, *coded = _check(SYNTHETIC["mixed-stored-and-coded"])
    assert stored == 0
    assert all(k >= 1 for k in coded)


def test_a_lone_zero_at_s_255_still_has_its_run_byte() -> None:
    """The doc says a z byte follows *each* 0, so also a lone 0 at s = 255, where z can only be 0."""
    payload = ctx_encode(SYNTHETIC["sparse-0-1-2-254"])
    assert payload[:2] == b"\x00\x01"  # centre 0, one table
    reader = _Reader(payload)
    reader.take(2 + CONTEXTS)
    freqs = _read_table(reader)
    assert freqs[254] > 0
    assert freqs[255] == 0
    assert payload[reader.pos - 2 : reader.pos] == b"\x00\x00"  # f[255] = 0, z = 0


@pytest.mark.parametrize("frame_index", [0, 5])
def test_spec_decoder_reads_real_footage(pets_cut: Path, frame_index: int) -> None:
    """Real pixels and their MED residual (the planes CTX sees in a key frame)."""
    planes = _footage_crop(pets_cut, frame_index)
    _check(planes)
    kinds = _check(np.ascontiguousarray(med(planes, (False, False, False))))
    assert all(k >= 1 for k in kinds)  # a residual of real footage always shrinks


def test_spec_decoder_reads_a_real_temporal_residual(pets_cut: Path) -> None:
    """The difference of two frames mod 256: mostly zeros, scattered small values of both signs."""
    a, b = _footage_crop(pets_cut, 0), _footage_crop(pets_cut, 1)
    _check(np.ascontiguousarray(np.subtract(b, a)))


def test_spec_decoder_reads_several_tables_and_a_real_map(pets_cut: Path) -> None:
    """Contexts only get tables of their own past 4096 samples, so this needs a bigger crop (120×160)."""
    planes = _footage_crop(pets_cut, top=0, left=0, height=120, width=160)
    kinds = _check(np.ascontiguousarray(med(planes, (False, False, False))))
    assert all(k >= 2 for k in kinds), kinds


def _activity_ramp(height: int, width: int, seed: int) -> Planes:
    """Sparse ±1 at the top to dense ±127 at the bottom: every one of the 16 contexts occurs."""
    rng = _rng(seed)
    level = np.linspace(0, 1, height)[:, None]
    spread = np.maximum(1, 127**level).astype(int)
    density = np.minimum(1, 0.05 + 2 * level)
    values = rng.integers(-spread, spread + 1, (height, width)) * (rng.random((height, width)) < density)
    return np.ascontiguousarray((values % 256).astype(np.uint8))


@pytest.mark.parametrize(("height", "width", "centre"), [(32, 32, 0), (24, 41, 7), (9, 3, 250)])
def test_sixteen_tables_pin_every_threshold(height: int, width: int, centre: int) -> None:
    """A table per context, built from the document, must decode with the compiled decoder."""
    symbols = _activity_ramp(height, width, height)
    plane = ((symbols.astype(int) + centre) % 256).astype(np.uint8)
    used = {_context(symbols.tolist(), x, y) for y in range(height) for x in range(width)}
    if height * width >= 1000:  # the tiny plane is there for widths below 4, not for coverage
        assert used == set(range(CONTEXTS))
    payload = _spec_encode_plane(plane, centre)
    assert _spec_decode(payload, 1, height, width) == plane.tobytes()
    assert ctx_decode(payload, 1, height, width).tobytes() == plane.tobytes()


# --- payloads built by hand from the document: what any encoder may write

CENTRE = 200
HEIGHT, WIDTH = 3, 5
ONE_TABLE = bytes.fromhex("808001 00fe")  # f[0] = 16384 (3 varint bytes), f[1] = 0 then 254 more zeros
FINAL = (1 << 23).to_bytes(4, "little") * 4


def _constant_plane(
    tables: bytes = ONE_TABLE, k_tables: int = 1, table_map: bytes = bytes(16), coded: bytes = FINAL
) -> bytes:
    """One plane whose every sample is s = 0: with f[0] = 16384 decoding never moves a state."""
    return bytes([CENTRE, k_tables]) + table_map + tables + len(coded).to_bytes(4, "little") + coded


ACCEPTED: dict[str, bytes] = {
    "minimal": _constant_plane(),
    "zeros-written-out": _constant_plane(tables=bytes.fromhex("808001") + bytes.fromhex("0000") * 255),
    "overlong-varints": _constant_plane(tables=bytes.fromhex("808001 808000 fe")),  # 0 in 3 bytes
    "unused-table": _constant_plane(tables=ONE_TABLE * 2, k_tables=2),
    "stored-any-centre": bytes([77, 0]) + bytes(range(HEIGHT * WIDTH)),  # K = 0: the values themselves
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_both_decoders_accept_hand_built_payloads(name: str) -> None:
    payload = ACCEPTED[name]
    expected = (
        bytes(range(HEIGHT * WIDTH)) if name.startswith("stored") else bytes([CENTRE]) * (HEIGHT * WIDTH)
    )
    assert _spec_decode(payload, 1, HEIGHT, WIDTH) == expected
    assert ctx_decode(payload, 1, HEIGHT, WIDTH).tobytes() == expected


# --- corruption the document names


def _corruptions() -> dict[str, tuple[bytes, tuple[int, int, int], str]]:
    """Each: a payload the doc calls corrupted, its shape, and what the spec decoder should say."""
    planes = SYNTHETIC["noise-0-1x17x33"]
    shape = (1, 17, 33)
    payload = ctx_encode(planes)
    k_tables = payload[1]
    assert k_tables >= 1, "expected a coded plane"
    out: dict[str, tuple[bytes, tuple[int, int, int], str]] = {}
    out["last-byte-removed"] = (payload[:-1], shape, "too few bytes")

    # c is the commonest value, so s = 0 is the commonest symbol and f[0] a 2-byte varint: flipping a low
    # bit of its first byte (just after centre, K and the 16-byte map) keeps the layout, not the sum.
    table = bytearray(payload)
    first = 2 + CONTEXTS
    assert table[first] & 0x80, "f[0] should need two varint bytes"
    table[first] ^= 0x02
    out["table-sum"] = (bytes(table), shape, "not 16384")

    bad_map = bytearray(payload)
    bad_map[2] = k_tables
    out["map-entry-ge-K"] = (bytes(bad_map), shape, "map entry")

    stored = ctx_encode(SYNTHETIC["random-1x17x33"])
    assert stored[1] == 0
    out["stored-short"] = (stored[:-1], shape, "too few bytes")
    out["k-above-16"] = (bytes([payload[0], 17]) + payload[2:], shape, "K = 17")

    small = (1, HEIGHT, WIDTH)
    below = (1 << 23) - 1
    out["zero-run-past-255"] = (_constant_plane(tables=bytes.fromhex("808001 00ff")), small, "runs past")
    out["varint-4-bytes"] = (_constant_plane(tables=bytes.fromhex("80808100 00fe")), small, "longer than 3")
    out["frequency-16385"] = (_constant_plane(tables=bytes.fromhex("818001 00fe")), small, "16385 > 16384")
    out["initial-state-low"] = (
        _constant_plane(coded=below.to_bytes(4, "little") + FINAL[4:]),
        small,
        "below",
    )
    out["final-state-not-2**23"] = (
        _constant_plane(coded=FINAL[:12] + ((1 << 23) + 1).to_bytes(4, "little")),
        small,
        "final states",
    )
    out["coded-byte-unread"] = (_constant_plane(coded=FINAL + b"\x00"), small, "left unread")
    out["d-below-16"] = (_constant_plane(coded=FINAL[:15]), small, "D = 15")
    out["byte-after-last-plane"] = (_constant_plane() + b"\x00", small, "after the last plane")
    return out


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_payloads_are_rejected_by_both(name: str) -> None:
    payload, (c, h, w), message = CORRUPTIONS[name]
    with pytest.raises(ValueError, match=message):
        _spec_decode(payload, c, h, w)
    with pytest.raises(WireFormatError):
        ctx_decode(payload, c, h, w)
