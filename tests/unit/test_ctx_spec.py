"""CTX against its specification: a decoder written only from docs/wire-format.md must read what the C writes.

A subscriber in another language has nothing but the document. So the decoder below follows its words step
by step (no code shared with ``agent/codec/_native.c``), and every payload the compiled encoder emits must
decode to the same planes with it as with the compiled decoder. Where they disagree, the document is wrong
or incomplete, and this file fails on purpose. An encoder written from the same words builds payloads the
compiled encoder never writes (a table per context, runs split where it would not split them, runs past
the end of a row), and the compiled decoder must read or refuse them as the document says. The compiled
encoder writes group planes only (version 4), banded from 2^19 samples (version 8); run planes and planes
without runs (versions 2 and 3) and bands it never cuts (one, or more than four) come from the encoder here,
since archives hold the former and the document allows the latter.
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.codec.native import ctx_bands, ctx_decode, ctx_encode
from agent.codec.transforms import med
from agent.errors import WireFormatError

Planes = npt.NDArray[np.uint8]
Event = tuple[int, int]  # (slot, symbol): k (0..15) for a sample in context k, RUN for a run, FLAG + j a flag

# --- the decoder, from the document alone

TOTAL = 16384  # "14-bit frequencies": every table sums to exactly 2**14
LOW = 1 << 23  # "Each initial state must be ≥ 2²³"; renormalise "while X < 2²³"
THRESHOLDS = (1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128)
CONTEXTS = 16  # "context k (0..15)"
MAX_TABLES = 16  # "K, 0..16"
RUN = CONTEXTS  # the slot of a run event; in the encoder below, also the run table's index (K = 16)
LONG_RUN = 255  # "r = 255: the next min(255, W − x) samples are symbol 0"
NO_RUNS = 0x80  # "bit 7: the plane has no runs (no run table, no run events)"
GROUPS = 0x40  # "bit 6 (version ≥ 4): a group plane"; bits 0-5 are K then, bits 0-6 before version 4
GROUP = 16  # "groups of 16 samples, the last of a row shorter when 16 does not divide W"
FLAG = RUN + 1  # a flag event in flag context j (0..3) has slot FLAG + j; its table is table K + j


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


def _activity(symbols: list[list[int]], x: int, y: int) -> int:
    """act at (x, y), from the symbols already decoded (rows above, columns to the left)."""
    height, width = len(symbols), len(symbols[0])

    def mag(xx: int, yy: int) -> int:
        inside = 0 <= xx < width and 0 <= yy < height
        return _magnitude(symbols[yy][xx]) if inside else 0  # outside the plane counts 0

    return 2 * mag(x - 1, y) + 2 * mag(x, y - 1) + mag(x - 1, y - 1) + mag(x + 1, y - 1)


def _context_of(act: int) -> int:
    """k: how many of the thresholds are ≤ act."""
    return sum(1 for t in THRESHOLDS if t <= act)


def _context(symbols: list[list[int]], x: int, y: int) -> int:
    return _context_of(_activity(symbols, x, y))


class _Plane(NamedTuple):
    values: bytes  # H·W values, row by row
    tables: int  # K; 0 means stored
    runs: bool  # whether the plane has runs (a run table and run events)
    events: list[Event]  # in decoding order; empty when stored
    groups: bool = False  # a group plane (flag tables and flag events)
    centre: int = 0
    bands: int = 0  # a banded group plane's B (version 8); 0 for any other plane


def _read_flag_table(reader: _Reader) -> list[int]:
    """A flag table is one varint, f[0]; f[1] = 16384 − f[0], and every other frequency is 0."""
    f0 = _read_varint(reader)
    return [f0, TOTAL - f0] + [0] * 254


def _decode_plane(reader: _Reader, height: int, width: int, version: int = 8) -> _Plane:
    """One coded plane of a record of ``version``: its values, K and the events it was read as (a banded
    plane's bands one after the other)."""
    centre = reader.byte()
    tables_byte = reader.byte()
    if tables_byte == 0:  # "The byte 0: stored": H·W bytes, the plane's values row by row; nothing else
        return _Plane(reader.take(height * width), 0, False, [])
    grouped = version >= 4 and bool(tables_byte & GROUPS)
    banded = grouped and version >= 8 and bool(tables_byte & NO_RUNS)  # "bits 6 and 7 both set (version 8)"
    if grouped and tables_byte & NO_RUNS and not banded:
        raise ValueError("a group plane without runs (bits 6 and 7)")
    if tables_byte == NO_RUNS:
        raise ValueError("the tables byte 0x80 (no tables, no runs)")
    if grouped and (tables_byte & ~NO_RUNS) == GROUPS:
        raise ValueError("the tables byte 0x40 or 0xC0 (a group plane without tables)")
    k_tables = tables_byte & (0x3F if grouped else 0x7F)
    has_runs = not grouped and not tables_byte & NO_RUNS
    if k_tables > MAX_TABLES:
        raise ValueError(f"K = {k_tables} > {MAX_TABLES}")
    table_map = list(reader.take(CONTEXTS))
    if any(m >= k_tables for m in table_map):
        raise ValueError(f"map entry ≥ K = {k_tables}: {table_map}")
    # "the K context tables, then the run table unless bit 7 is set", or in a group plane the 4 flag tables
    freqs = [_read_table(reader) for _ in range(k_tables + has_runs)]
    if grouped:
        freqs += [_read_flag_table(reader) for _ in range(4)]
    run_table = k_tables
    # start[s] is the sum of the frequencies below s; start[256] = 16384 closes the last interval
    starts = [[sum(f[:s]) for s in range(257)] for f in freqs]
    events: list[Event] = []

    def coded_rows(height: int) -> bytes:
        """Reads "a u32 length D ≥ 16 and D bytes": the values of ``height`` rows decoded from them as a plane
        of its own (a band: its rows' neighbours above its first row are outside), events counted from 0."""
        length = reader.u32()
        if length < 16:
            raise ValueError(f"D = {length} < 16")
        coded = _Reader(reader.take(length))
        states = [coded.u32() for _ in range(4)]  # state 0 first
        if any(x < LOW for x in states):
            raise ValueError(f"initial state below 2**23: {states}")
        first = len(events)

        def decode(slot: int, table: int) -> int:
            """The next event's symbol: event e (counted over the plane, or the band) uses state[e mod 4]."""
            e = len(events) - first
            f, start = freqs[table], starts[table]
            state = states[e % 4]
            slot_value = state % TOTAL
            s = bisect_right(start, slot_value) - 1  # start[s] ≤ slot < start[s] + f[s] (skips f = 0)
            state = f[s] * (state // TOTAL) + slot_value - start[s]
            while state < LOW:
                state = state * 256 + coded.byte()
            states[e % 4] = state
            events.append((slot, s))
            return s

        symbols = [[0] * width for _ in range(height)]
        values = bytearray()
        flags_above = [0] * -(-width // GROUP)  # above the first row, every flag counts 0
        for y in range(height):
            row = symbols[y]
            x = 0
            if grouped:
                left = 0  # the flag to the left; 0 for a row's first group
                for g in range(len(flags_above)):
                    j = left + 2 * flags_above[g]
                    flag = decode(FLAG + j, k_tables + j)
                    stop = min(width, x + GROUP)
                    for xx in range(x, stop):  # flag 0: symbol 0 throughout; flag 1: each sample an event
                        s = 0
                        if flag:
                            k = _context(symbols, xx, y)
                            s = decode(k, table_map[k])
                        row[xx] = s
                        values.append((s + centre) % 256)
                    flags_above[g] = left = flag
                    x = stop
                continue
            after_short_run = False  # the row's previous event was a run with r < 255
            while x < width:
                act = _activity(symbols, x, y)  # the neighbours it reads are all decoded already
                if has_runs and act == 0 and not after_short_run:
                    r = decode(RUN, run_table)
                    if r == LONG_RUN:
                        n = min(LONG_RUN, width - x)
                    elif r >= width - x:
                        raise ValueError(f"run r = {r} at x = {x} runs past the end of its row (W = {width})")
                    else:
                        n = r  # and the sample after them is a sample event, whatever its act
                    after_short_run = r < LONG_RUN
                    row[x : x + n] = [0] * n
                    values += bytes([centre]) * n  # symbol 0: v = c
                    x += n
                else:
                    s = decode(_context_of(act), table_map[_context_of(act)])
                    row[x] = s
                    values.append((s + centre) % 256)
                    x += 1
                    after_short_run = False
        if states != [LOW] * 4:
            raise ValueError(f"final states {states} are not all 2**23")
        if coded.pos != length:
            raise ValueError(f"{length - coded.pos} of the D = {length} coded bytes left unread")
        return bytes(values)

    if not banded:
        return _Plane(coded_rows(height), k_tables, has_runs, events, grouped, centre)
    bands = reader.byte()  # "a byte B, 1 ≤ B ≤ H", then each band's D and bytes
    if not 1 <= bands <= height:
        raise ValueError(f"B = {bands} bands in {height} rows")
    cuts = [b * height // bands for b in range(bands + 1)]  # band b: rows ⌊b·H/B⌋ .. ⌊(b+1)·H/B⌋ − 1
    values = b"".join(coded_rows(cuts[b + 1] - cuts[b]) for b in range(bands))
    return _Plane(values, k_tables, has_runs, events, grouped, centre, bands)


def _spec_decode_planes(
    payload: bytes, channels: int, height: int, width: int, version: int = 8
) -> list[_Plane]:
    """Each plane with its K and events, so tests can tell which paths (stored, coded, runs) they exercised."""
    reader = _Reader(bytes(payload))
    planes = [_decode_plane(reader, height, width, version) for _ in range(channels)]
    if reader.pos != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.pos} bytes after the last plane")
    return planes


def _spec_decode(payload: bytes, channels: int, height: int, width: int) -> bytes:
    """C planes of H×W bytes, plane by plane, row by row; ValueError on anything the doc calls corrupted."""
    return b"".join(p.values for p in _spec_decode_planes(payload, channels, height, width))


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
    """Counts to frequencies summing to 16384, every occurring symbol ≥ 1 (a table never used: f[0] = 16384)."""
    total = sum(counts)
    if not total:
        return [TOTAL] + [0] * 255
    freqs = [max(1, c * TOTAL // total) if c else 0 for c in counts]
    freqs[freqs.index(max(freqs))] += TOTAL - sum(freqs)
    return freqs


def _events(symbols: list[list[int]], runs: bool = True) -> list[Event]:
    """A plane's events as an encoder may choose them (the document leaves the choice of r open).

    At a column where a run event is due: r = 255 when 255 zeros follow or the zeros reach the row's end,
    else r = the number of zeros before the next nonzero symbol, which is then a sample event. Without
    runs, every sample is a sample event.
    """
    events: list[Event] = []
    for y, row in enumerate(symbols):
        width = len(row)
        x = 0
        after_short_run = False
        while x < width:
            act = _activity(symbols, x, y)  # every neighbour precedes (x, y) in raster order
            if runs and act == 0 and not after_short_run:
                n = 0
                while x + n < width and n < LONG_RUN and row[x + n] == 0:
                    n += 1
                after_short_run = n < LONG_RUN and x + n < width
                events.append((RUN, n if after_short_run else LONG_RUN))
                x += n
            else:
                events.append((_context_of(act), row[x]))
                x += 1
                after_short_run = False
    return events


def _group_events(symbols: list[list[int]]) -> list[Event]:
    """A group plane's events: each group's flag (1 where any of its symbols is not 0), then if 1 its samples."""
    events: list[Event] = []
    above = [0] * -(-len(symbols[0]) // GROUP)
    for y, row in enumerate(symbols):
        left = 0
        for g in range(len(above)):
            x0, x1 = g * GROUP, min(len(row), (g + 1) * GROUP)
            flag = int(any(row[x0:x1]))
            events.append((FLAG + left + 2 * above[g], flag))
            if flag:
                events += [(_context(symbols, x, y), row[x]) for x in range(x0, x1)]
            above[g] = left = flag
    return events


def _table_of(slot: int) -> int:
    """The table index of an event's slot in the planes built here: K = 16, so flag table j is 16 + j."""
    return slot - 1 if slot >= FLAG else slot


def _spec_encode_groups(centre: int, events: list[Event]) -> bytes:
    """A group plane from its events: 16 context tables and the identity map, then the 4 flag tables."""
    counts = [[0] * 256 for _ in range(CONTEXTS + 4)]
    for slot, s in events:
        counts[_table_of(slot)][s] += 1
    freqs = [_scale(c) for c in counts]
    for f in freqs[CONTEXTS:]:
        assert not any(f[2:]), "a flag is 0 or 1"
    coded = _rans([(_table_of(slot), s) for slot, s in events], freqs)
    tables = b"".join(_write_table(f) for f in freqs[:CONTEXTS]) + b"".join(
        _leb128(f[0]) for f in freqs[CONTEXTS:]
    )
    head = bytes([centre, CONTEXTS | GROUPS, *range(CONTEXTS)])
    return head + tables + len(coded).to_bytes(4, "little") + coded


def _band_parts(centre: int, symbols: list[list[int]], bands: int) -> tuple[bytes, list[bytes]]:
    """A banded group plane (version 8) of ``bands`` bands: its header and tables, and each band's coded
    samples. Each band's events are those of a group plane of its rows alone; one set of tables is counted
    over all of them; each band is coded on four states of its own."""
    height = len(symbols)
    cuts = [b * height // bands for b in range(bands + 1)]
    band_events = [_group_events(symbols[cuts[b] : cuts[b + 1]]) for b in range(bands)]
    counts = [[0] * 256 for _ in range(CONTEXTS + 4)]
    for events in band_events:
        for slot, s in events:
            counts[_table_of(slot)][s] += 1
    freqs = [_scale(c) for c in counts]
    tables = b"".join(_write_table(f) for f in freqs[:CONTEXTS]) + b"".join(
        _leb128(f[0]) for f in freqs[CONTEXTS:]
    )
    coded = [_rans([(_table_of(slot), s) for slot, s in events], freqs) for events in band_events]
    return bytes([centre, CONTEXTS | GROUPS | NO_RUNS, *range(CONTEXTS)]) + tables, coded


def _spec_encode_bands(centre: int, symbols: list[list[int]], bands: int) -> bytes:
    head, coded = _band_parts(centre, symbols, bands)
    return head + bytes([bands]) + b"".join(len(c).to_bytes(4, "little") + c for c in coded)


def _rans(events: list[Event], freqs: list[list[int]]) -> bytes:
    """The coded samples: event e = (table, symbol) on state e mod 4.

    rANS runs backwards: events last to first, bytes pushed then reversed, so the decoder's "while X < 2²³:
    X ← X·256 + the next byte" reads them forwards.
    """
    starts = [[sum(f[:s]) for s in range(256)] for f in freqs]
    states = [LOW] * 4
    pushed = bytearray()
    for e in reversed(range(len(events))):
        table, s = events[e]
        f, state = freqs[table][s], states[e % 4]
        while state >= (LOW // TOTAL) * 256 * f:  # so that the decoder's X lands back in [2²³, 2³¹)
            pushed.append(state & 0xFF)
            state >>= 8
        states[e % 4] = (state // f) * TOTAL + state % f + starts[table][s]
    return b"".join(x.to_bytes(4, "little") for x in states) + bytes(reversed(pushed))


def _spec_encode_events(centre: int, events: list[Event], runs: bool = True) -> bytes:
    """One coded plane from its events: 16 tables and the identity map, so every threshold decides a table.

    The compiled encoder merges adjacent contexts until a table has 4096 samples, so on planes small enough
    for this file it never shows whether the decoder puts act = 3 or act = 4 in the right context; a table
    per context does. The run table comes last (index 16 = K), unless the plane has no runs (bit 7 of the
    tables byte set, and no run table at all): a run plane or a plane without runs, as versions 2 and 3 wrote.
    """
    assert runs or all(slot != RUN for slot, _ in events)
    counts = [[0] * 256 for _ in range(CONTEXTS + runs)]
    for slot, s in events:
        counts[slot][s] += 1
    freqs = [_scale(c) for c in counts]
    coded = _rans(events, freqs)  # a slot is its table here: k, or RUN = 16 = K
    tables = b"".join(_write_table(f) for f in freqs)
    tables_byte = CONTEXTS if runs else CONTEXTS | NO_RUNS
    return bytes([centre, tables_byte, *range(CONTEXTS)]) + tables + len(coded).to_bytes(4, "little") + coded


def _symbols(plane: Planes, centre: int) -> list[list[int]]:
    return [[(int(v) - centre) % 256 for v in row] for row in plane]


def _spec_encode_plane(plane: Planes, centre: int, runs: bool = True) -> bytes:
    return _spec_encode_events(centre, _events(_symbols(plane, centre), runs), runs)


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


def _read_frame(path: Path, frame_index: int) -> npt.NDArray[np.uint8]:
    capture = cv2.VideoCapture(str(path))
    try:
        for _ in range(frame_index + 1):
            ok, frame = capture.read()
            assert ok, f"could not read frame {frame_index} from {path}"
    finally:
        capture.release()
    return np.asarray(frame, dtype=np.uint8)


def _footage_crop(
    path: Path, frame_index: int = 0, top: int = 100, left: int = 200, height: int = 32, width: int = 48
) -> Planes:
    """A crop of a real BGR frame, as planes (B, G, R)."""
    crop = _read_frame(path, frame_index)[top : top + height, left : left + width]
    planes: Planes = np.ascontiguousarray(crop.transpose(2, 0, 1))
    return planes


def _sparse(shape: tuple[int, int, int], values: list[int], weights: list[float], seed: int) -> Planes:
    """Values drawn from a few, so the table has long zero runs and a lone f = 0 (with z = 0) at s = 255."""
    chosen = _rng(seed).choice(np.array(values, dtype=np.uint8), size=shape, p=weights)
    return np.ascontiguousarray(chosen)


def _zeros_but(shape: tuple[int, int, int], points: dict[tuple[int, int, int], int]) -> Planes:
    """Zeros except at the given (plane, y, x)."""
    planes = np.zeros(shape, dtype=np.uint8)
    for (c, y, x), value in points.items():
        planes[c, y, x] = value
    return planes


def _spikes(shape: tuple[int, int, int], density: float, seed: int) -> Planes:
    """Isolated small values of both signs in zeros: runs of every length, ending before a nonzero."""
    rng = _rng(seed)
    values = rng.integers(1, 4, shape) * rng.choice([-1, 1], shape) * (rng.random(shape) < density)
    return np.ascontiguousarray((values % 256).astype(np.uint8))


SYNTHETIC: dict[str, Planes] = {
    "zeros-1x1": np.zeros((1, 1, 1), dtype=np.uint8),
    "zeros-3x5x7": np.zeros((3, 5, 7), dtype=np.uint8),
    "constant-200": np.full((1, 17, 33), 200, dtype=np.uint8),  # centre 200: all symbols 0, one run a row
    "random-1x1": _rng(1).integers(0, 256, (1, 1, 1), dtype=np.uint8),
    "random-1x17x33": _rng(2).integers(0, 256, (1, 17, 33), dtype=np.uint8),
    "random-3x24x40": _rng(3).integers(0, 256, (3, 24, 40), dtype=np.uint8),
    "noise-0-3x5x7": _noise((3, 5, 7), 0, 2, 4),
    "noise-0-1x17x33": _noise((1, 17, 33), 0, 3, 5),
    "noise-0-3x24x40": _noise((3, 24, 40), 0, 4, 6),
    "noise-128-3x24x40": _noise((3, 24, 40), 128, 4, 7),
    "wide-noise-3x24x40": _noise((3, 24, 40), 0, 60, 8),
    "narrow-2x9x1": _noise((2, 9, 1), 0, 2, 9),  # a row is one or two events: states cycle across rows
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

# Planes made for runs, each with run symbols its events must include (with the encoder above; the compiled
# one is checked for them too, so that a change of its choices cannot silently drop the coverage).
RUNS: dict[str, tuple[Planes, set[int]]] = {
    # a row of exactly 255 zeros: one r = 255 covers it
    "row-of-255-zeros": (np.zeros((1, 1, 255), dtype=np.uint8), {255}),
    "rows-of-255-zeros": (np.zeros((2, 3, 255), dtype=np.uint8), {255}),
    # 256 zeros: r = 255, then act = 0 again and r = 255 covers the one sample left
    "rows-of-256-zeros": (np.zeros((1, 3, 256), dtype=np.uint8), {255}),
    "rows-of-600-zeros": (np.zeros((1, 2, 600), dtype=np.uint8), {255}),  # 255 + 255 + 90
    # r = 0: a nonzero where act = 0, first in the plane, then mid-row (x = 7: two columns after the 3)
    "r-0-first-sample": (_zeros_but((1, 2, 40), {(0, 0, 0): 9}), {0, 255}),
    "r-0-mid-row": (_zeros_but((1, 3, 40), {(0, 1, 5): 3, (0, 1, 7): 253}), {0, 5, 255}),
    # runs ending right before a nonzero: the longest short run (254), and 255 zeros then r = 0
    "r-254-then-nonzero": (_zeros_but((1, 2, 300), {(0, 1, 254): 5}), {254, 255}),
    "r-255-then-r-0": (_zeros_but((1, 2, 300), {(0, 1, 255): 251}), {0, 255}),
    # runs reaching the row end with fewer than 255 samples left (29 here), and with exactly 255 left
    "run-to-row-end-short": (_zeros_but((1, 4, 31), {(0, 0, 0): 7, (0, 2, 0): 249}), {0, 255}),
    "run-to-row-end-255-left": (_zeros_but((1, 2, 257), {(0, 1, 0): 7}), {0, 255}),
    # all zeros except the last sample: r = W - 1 short of it, or 255 and then the rest
    "last-sample-only-6x40": (_zeros_but((1, 6, 40), {(0, 5, 39): 1}), {39, 255}),
    "last-sample-only-4x300": (_zeros_but((2, 4, 300), {(0, 3, 299): 1, (1, 3, 299): 255}), {44, 255}),
}

# Isolated spikes in zeros: runs of many lengths with the encoder above. The compiled encoder codes these
# without runs (cheaper for it), so they are in SYNTHETIC for it and here for the encoder above.
SPIKES: dict[str, tuple[Planes, set[int]]] = {
    "spikes-1x24x300": (_spikes((1, 24, 300), 0.02, 21), {0, 1, 2, 255}),
    "spikes-3x16x96": (_spikes((3, 16, 96), 0.1, 22), {0, 1, 2, 255}),
}
SYNTHETIC.update({name: planes for name, (planes, _) in SPIKES.items()})


def _check(planes: Planes) -> list[_Plane]:
    """The spec decoder and the compiled one both give back the planes; returns what the spec decoder read."""
    channels, height, width = planes.shape
    payload = ctx_encode(planes)
    assert len(payload) <= planes.size + 2 * channels  # "CTX never exceeds W·H·C + 2·C"
    decoded = _spec_decode_planes(payload, channels, height, width)
    assert b"".join(p.values for p in decoded) == planes.tobytes()
    assert ctx_decode(payload, channels, height, width).tobytes() == planes.tobytes()
    assert all(p.groups for p in decoded if p.tables), "the compiled encoder writes group planes"
    return decoded


def _flags(planes: list[_Plane]) -> list[int]:
    return [s for p in planes for slot, s in p.events if slot >= FLAG]


def _runs(planes: list[_Plane]) -> set[int]:
    return {s for p in planes for slot, s in p.events if slot == RUN}


# --- the compiled encoder's bytes, read by the document


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_spec_decoder_reads_compiled_output(name: str) -> None:
    _check(np.ascontiguousarray(SYNTHETIC[name]))


def test_every_plane_kind_is_exercised() -> None:
    """Random bytes cannot shrink, so they are stored (K = 0); residual-like noise is coded (K ≥ 1) as a group
    plane, with flags of both values where zeros and values mix."""
    assert [p.tables for p in _check(SYNTHETIC["random-3x24x40"])] == [0, 0, 0]
    assert all(p.tables >= 1 for p in _check(SYNTHETIC["noise-0-3x24x40"]))
    stored, *coded = _check(SYNTHETIC["mixed-stored-and-coded"])
    assert stored.tables == 0
    assert all(p.tables >= 1 for p in coded)
    mixed = _check(SYNTHETIC["spikes-3x16x96"]) + _check(SYNTHETIC["sparse-0-1-2-254"])
    assert all(p.tables >= 1 and p.groups and not p.runs for p in mixed)
    assert set(_flags(mixed)) == {0, 1}
    assert all(slot != RUN for p in mixed for slot, _ in p.events)


def test_a_constant_plane_is_one_flag_a_group() -> None:
    """Centre 200 makes every symbol 0, so each row of 33 is three groups (16, 16, 1), each a flag of 0 in flag
    context 0 (nothing flagged to the left or above)."""
    (plane,) = _check(SYNTHETIC["constant-200"])
    assert plane.tables >= 1
    assert plane.events == [(FLAG, 0)] * 17 * 3


def test_a_lone_zero_at_s_255_still_has_its_run_byte() -> None:
    """The doc says a z byte follows *each* 0, so also a lone 0 at s = 255, where z can only be 0."""
    payload = ctx_encode(SYNTHETIC["sparse-0-1-2-254"])
    assert payload[0] == 0  # centre 0
    assert payload[1] == GROUPS | 1  # a group plane with one context table
    reader = _Reader(payload)
    reader.take(2 + CONTEXTS)
    freqs = _read_table(reader)
    assert freqs[254] > 0
    assert freqs[255] == 0
    assert payload[reader.pos - 2 : reader.pos] == b"\x00\x00"  # f[255] = 0, z = 0


@pytest.mark.parametrize("name", sorted(RUNS))
def test_spec_decoder_reads_compiled_group_planes(name: str) -> None:
    """Rows of 255, 256, 257, 300 and 600 samples and lone values at either end: the last group of a row is
    shorter, and its flag is 1 exactly where one of its symbols is not 0."""
    planes, _ = RUNS[name]
    decoded = _check(planes)
    coded = [(plane, p) for plane, p in zip(planes, decoded, strict=True) if p.tables]
    assert coded, "these planes shrink"
    for plane, p in coded:
        assert p.events == _group_events(_symbols(plane, p.centre))


@pytest.mark.parametrize("mode", ["runs", "no-runs", "groups"])
@pytest.mark.parametrize("name", sorted(RUNS | SPIKES))
def test_compiled_decoder_reads_spec_planes(name: str, mode: str) -> None:
    """The same planes coded by the encoder above, plane by plane, centre 0: with runs and without (as
    versions 2 and 3 wrote), and as group planes."""
    planes, expected = (RUNS | SPIKES)[name]
    channels, height, width = planes.shape
    if mode == "groups":
        payload = b"".join(_spec_encode_groups(0, _group_events(_symbols(plane, 0))) for plane in planes)
    else:
        payload = b"".join(_spec_encode_plane(plane, 0, mode == "runs") for plane in planes)
    decoded = _spec_decode_planes(payload, channels, height, width)
    assert [(p.runs, p.groups) for p in decoded] == [(mode == "runs", mode == "groups")] * channels
    if mode == "groups":
        assert [p.events for p in decoded] == [_group_events(_symbols(plane, 0)) for plane in planes]
    else:
        assert [p.events for p in decoded] == [
            _events(_symbols(plane, 0), mode == "runs") for plane in planes
        ]
    assert _runs(decoded) >= expected if mode == "runs" else not _runs(decoded)
    assert b"".join(p.values for p in decoded) == planes.tobytes()
    assert ctx_decode(payload, channels, height, width).tobytes() == planes.tobytes()
    if mode != "groups":  # what versions 2 and 3 wrote decodes the same in their records
        assert ctx_decode(payload, channels, height, width, group_planes=False).tobytes() == planes.tobytes()


@pytest.mark.parametrize("frame_index", [0, 5])
def test_spec_decoder_reads_real_footage(pets_cut: Path, frame_index: int) -> None:
    """Real pixels and their MED residual (the planes CTX sees in a key frame)."""
    planes = _footage_crop(pets_cut, frame_index)
    _check(planes)
    decoded = _check(np.ascontiguousarray(med(planes, (False, False, False))))
    assert all(p.tables >= 1 for p in decoded)  # a residual of real footage always shrinks


def test_spec_decoder_reads_a_real_temporal_residual(pets_cut: Path) -> None:
    """The difference of two frames mod 256: mostly zeros, scattered small values of both signs."""
    a, b = _footage_crop(pets_cut, 0), _footage_crop(pets_cut, 1)
    _check(np.ascontiguousarray(np.subtract(b, a)))


def test_spec_decoder_reads_a_wide_static_residual(pets_cut: Path) -> None:
    """Full-width rows (768: 48 groups) of a static scene's frame difference: every flag context occurs."""
    a, b = (_read_frame(pets_cut, i)[:16] for i in (0, 1))
    planes = np.ascontiguousarray(np.subtract(b, a).transpose(2, 0, 1))
    decoded = _check(planes)
    assert all(p.tables >= 1 for p in decoded)
    flags = _flags(decoded)
    assert len(flags) == 3 * 16 * 48
    assert set(flags) == {0, 1}  # moving and still groups (pets' luma noise flags most of them)
    assert {slot - FLAG for p in decoded for slot, _ in p.events if slot >= FLAG} == {0, 1, 2, 3}


def test_spec_decoder_reads_several_tables_and_a_real_map(pets_cut: Path) -> None:
    """Contexts only get tables of their own past 4096 samples, so this needs a bigger crop (120×160)."""
    planes = _footage_crop(pets_cut, top=0, left=0, height=120, width=160)
    decoded = _check(np.ascontiguousarray(med(planes, (False, False, False))))
    assert all(p.tables >= 2 for p in decoded), [p.tables for p in decoded]


def _activity_ramp(height: int, width: int, seed: int) -> Planes:
    """Sparse ±1 at the top to dense ±127 at the bottom: every one of the 16 contexts occurs."""
    rng = _rng(seed)
    level = np.linspace(0, 1, height)[:, None]
    spread = np.maximum(1, 127**level).astype(int)
    density = np.minimum(1, 0.05 + 2 * level)
    values = rng.integers(-spread, spread + 1, (height, width)) * (rng.random((height, width)) < density)
    return np.ascontiguousarray((values % 256).astype(np.uint8))


@pytest.mark.parametrize("mode", ["runs", "no-runs", "groups"])
@pytest.mark.parametrize(("height", "width", "centre"), [(32, 32, 0), (24, 41, 7), (9, 3, 250)])
def test_sixteen_tables_pin_every_threshold(height: int, width: int, centre: int, mode: str) -> None:
    """A table per context, built from the document, must decode with the compiled decoder."""
    symbols = _activity_ramp(height, width, height)
    plane = ((symbols.astype(int) + centre) % 256).astype(np.uint8)
    runs = mode == "runs"
    events = _group_events(symbols.tolist()) if mode == "groups" else _events(symbols.tolist(), runs)
    if height * width >= 1000:  # the tiny plane is there for widths below 4, not for coverage
        # with runs, k = 0 still occurs: the sample after a run with r < 255, whatever its act
        expected = {*range(CONTEXTS), RUN} if runs else set(range(CONTEXTS))
        assert {slot for slot, _ in events if slot < FLAG} == expected
    payload = (
        _spec_encode_groups(centre, events) if mode == "groups" else _spec_encode_plane(plane, centre, runs)
    )
    (decoded,) = _spec_decode_planes(payload, 1, height, width)
    assert decoded.events == events
    assert decoded.values == plane.tobytes()
    assert ctx_decode(payload, 1, height, width).tobytes() == plane.tobytes()


# --- payloads built by hand from the document: what any encoder may write

CENTRE = 200
SHAPE = (1, 3, 5)
FINAL = (1 << 23).to_bytes(4, "little") * 4


def _only(s: int) -> bytes:
    """A table with f[s] = 16384 and every other 0: decoding from it gives s and never moves a state."""
    before = bytes([0, s - 1]) if s else b""  # f[0] = 0, then s − 1 more zeros not written
    after = bytes([0, 254 - s]) if s < 255 else b""
    return before + _leb128(TOTAL) + after


ZERO, ONE = _only(0), _only(1)  # context tables: every sample is s = 0, or every sample s = 1
RUN_255, RUN_0, RUN_2, RUN_5 = _only(255), _only(0), _only(2), _only(5)  # run tables: every run is that r


def _degenerate_plane(
    tables: bytes = ZERO + RUN_255, tables_byte: int = 1, table_map: bytes = bytes(16), coded: bytes = FINAL
) -> bytes:
    """One plane whose tables each hold one symbol, so its four states stay at 2²³ from first to last."""
    return bytes([CENTRE, tables_byte]) + table_map + tables + len(coded).to_bytes(4, "little") + coded


def _values(shape: tuple[int, int, int], symbol: int) -> bytes:
    return bytes([(symbol + CENTRE) % 256]) * (shape[0] * shape[1] * shape[2])


def _group_plane(
    tables: bytes = ZERO, flags: bytes = _leb128(TOTAL) * 4, tables_byte: int = GROUPS | 1
) -> bytes:
    """A group plane of one-symbol tables: its flag tables give f[0] (16384: every flag 0; 0: every flag 1)."""
    return _degenerate_plane(tables=tables + flags, tables_byte=tables_byte)


ALL_FLAGGED = _leb128(0) * 4  # f[0] = 0, f[1] = 16384: every flag is 1

ACCEPTED: dict[str, tuple[bytes, tuple[int, int, int], bytes]] = {
    # every row is one run of 255 covering its 5 samples: 3 events; the context table is never used
    "minimal": (_degenerate_plane(), SHAPE, _values(SHAPE, 0)),
    "zeros-written-out": (
        _degenerate_plane(tables=_leb128(TOTAL) + bytes(2) * 255 + bytes(2) * 255 + _leb128(TOTAL)),
        SHAPE,
        _values(SHAPE, 0),
    ),
    "overlong-varints": (  # f = 0 in 3 bytes, in both tables
        _degenerate_plane(tables=bytes.fromhex("808001 808000 fe 808000 fe 808001")),
        SHAPE,
        _values(SHAPE, 0),
    ),
    "unused-table": (_degenerate_plane(tables=ZERO * 2 + RUN_255, tables_byte=2), SHAPE, _values(SHAPE, 0)),
    # act = 0 only at (0, 0): a run of r = 0, then every sample a sample event with s = 1
    "ones-after-r-0": (_degenerate_plane(tables=ONE + RUN_0), SHAPE, _values(SHAPE, 1)),
    # all zeros as r = 0 and s = 0 in turn: the run rule at every column, the sample rule at every other
    "zeros-as-r-0-and-samples": (_degenerate_plane(tables=ZERO + RUN_0), SHAPE, _values(SHAPE, 0)),
    # W = 6: r = 2, then s = 0 where act = 0 (a sample event whatever its act), r = 2 (2 < W − 3), s = 0
    "zeros-as-r-2-and-samples": (_degenerate_plane(tables=ZERO + RUN_2), (1, 3, 6), _values((1, 3, 6), 0)),
    "stored-any-centre": (bytes([77, 0]) + bytes(range(15)), SHAPE, bytes(range(15))),  # K = 0: the values
    # bit 7: no run table, and every sample a sample event, also where act = 0
    "no-runs-zeros": (_degenerate_plane(tables=ZERO, tables_byte=0x81), SHAPE, _values(SHAPE, 0)),
    "no-runs-ones": (_degenerate_plane(tables=ONE, tables_byte=0x81), SHAPE, _values(SHAPE, 1)),
    "no-runs-unused-table": (
        _degenerate_plane(tables=ONE + ZERO, tables_byte=0x82, table_map=bytes(15) + b"\x01"),
        SHAPE,
        _values(SHAPE, 1),
    ),
    # group planes: every flag 0 (one event a row of 5), every flag 1 with every sample 1, flagged groups of
    # zeros only (valid, though an encoder has no reason to write them), and two groups a row (16 + 4)
    "groups-all-zero": (_group_plane(), SHAPE, _values(SHAPE, 0)),
    "groups-all-ones": (_group_plane(tables=ONE, flags=ALL_FLAGGED), SHAPE, _values(SHAPE, 1)),
    "groups-flagged-zeros": (_group_plane(flags=ALL_FLAGGED), SHAPE, _values(SHAPE, 0)),
    "groups-two-a-row": (_group_plane(tables=ONE, flags=ALL_FLAGGED), (1, 2, 20), _values((1, 2, 20), 1)),
    "groups-unused-table": (
        _group_plane(tables=ZERO + ONE, flags=ALL_FLAGGED, tables_byte=GROUPS | 2),
        SHAPE,
        _values(SHAPE, 0),
    ),
}

ACCEPTED_EVENTS = {  # what each event was, run or sample, and its symbol
    "minimal": [("run", 255)] * 3,
    "ones-after-r-0": [("run", 0)] + [("sample", 1)] * 15,
    "zeros-as-r-0-and-samples": [("run", 0), ("sample", 0)] * 15,
    "zeros-as-r-2-and-samples": [("run", 2), ("sample", 0)] * 6,
    "stored-any-centre": [],
    "no-runs-zeros": [("sample", 0)] * 15,
    "no-runs-ones": [("sample", 1)] * 15,
    "groups-all-zero": [("flag", 0)] * 3,
    "groups-all-ones": ([("flag", 1)] + [("sample", 1)] * 5) * 3,
    "groups-flagged-zeros": ([("flag", 1)] + [("sample", 0)] * 5) * 3,
    "groups-two-a-row": ([("flag", 1)] + [("sample", 1)] * 16 + [("flag", 1)] + [("sample", 1)] * 4) * 2,
}


def _kinds(events: list[Event]) -> list[tuple[str, int]]:
    return [("flag" if slot >= FLAG else "run" if slot == RUN else "sample", s) for slot, s in events]


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_both_decoders_accept_hand_built_payloads(name: str) -> None:
    payload, shape, expected = ACCEPTED[name]
    (decoded,) = _spec_decode_planes(payload, *shape)
    assert decoded.values == expected
    if name in ACCEPTED_EVENTS:
        assert _kinds(decoded.events) == ACCEPTED_EVENTS[name]
    assert ctx_decode(payload, *shape).tobytes() == expected


# --- corruption the document names


def _run_past_the_row_end() -> tuple[bytes, tuple[int, int, int]]:
    """A real rANS stream whose last row opens with r = W: valid events up to there, then a run too long."""
    planes = _spikes((1, 6, 20), 0.3, 23)
    planes[0, -2] = 0  # so that act = 0 at the last row's first column: a run event is due there
    symbols = _symbols(planes[0], 0)
    events = [*_events(symbols[:-1]), (RUN, 20)]  # contexts of a row depend only on the rows above
    return _spec_encode_events(0, events), planes.shape


def _corruptions() -> dict[str, tuple[bytes, tuple[int, int, int], str]]:
    """Each: a payload the doc calls corrupted, its shape, and what the spec decoder should say."""
    planes = SYNTHETIC["noise-0-1x17x33"]
    shape = (1, 17, 33)
    payload = ctx_encode(planes)
    assert payload[1] & GROUPS, "expected a group plane"
    k_tables = payload[1] & 0x3F
    assert 1 <= k_tables <= MAX_TABLES
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
    out["k-above-16-no-runs"] = (bytes([payload[0], 17 | NO_RUNS]) + payload[2:], shape, "K = 17")
    out["tables-byte-0x80"] = (bytes([payload[0], NO_RUNS]) + payload[2:], shape, "tables byte 0x80")
    out["tables-byte-0x80-stored"] = (bytes([0, NO_RUNS]) + stored[2:], shape, "tables byte 0x80")
    out["group-plane-without-tables"] = (bytes([payload[0], GROUPS]) + payload[2:], shape, "tables byte 0x40")
    out["group-k-above-16"] = (bytes([payload[0], GROUPS | 17]) + payload[2:], shape, "K = 17")
    out["flag-table-16385"] = (_group_plane(flags=bytes.fromhex("818001") * 4), SHAPE, "16385 > 16384")
    out["flag-table-varint-4-bytes"] = (
        _group_plane(flags=bytes.fromhex("80808000") * 4),
        SHAPE,
        "longer than 3",
    )
    out["flag-tables-missing"] = (_group_plane(flags=b""), SHAPE, "too few bytes")  # D read from the states

    below = (1 << 23) - 1
    out["zero-run-past-255"] = (
        _degenerate_plane(tables=bytes.fromhex("808001 00ff") + RUN_255),
        SHAPE,
        "past",
    )
    out["varint-4-bytes"] = (
        _degenerate_plane(tables=bytes.fromhex("80808100 00fe") + RUN_255),
        SHAPE,
        "longer than 3",
    )
    out["frequency-16385"] = (
        _degenerate_plane(tables=bytes.fromhex("818001 00fe") + RUN_255),
        SHAPE,
        "16385 > 16384",
    )
    out["run-table-sum"] = (_degenerate_plane(tables=ZERO + bytes.fromhex("00fe ff7f")), SHAPE, "not 16384")
    out["run-table-zero-run-past-255"] = (
        _degenerate_plane(tables=ZERO + bytes.fromhex("0000 00ff")),
        SHAPE,
        "runs past s = 255",
    )
    # bit 7 clear but no run table: the length and the states are read as the run table
    out["no-run-table"] = (_degenerate_plane(tables=ZERO), SHAPE, "zero run of 128 runs past s = 255")
    # bit 7 set but a run table written: its bytes are read as D (0x8080fe00)
    out["run-table-without-runs"] = (
        _degenerate_plane(tables=ZERO + RUN_255, tables_byte=0x81),
        SHAPE,
        "too few bytes",
    )
    out["initial-state-low"] = (
        _degenerate_plane(coded=below.to_bytes(4, "little") + FINAL[4:]),
        SHAPE,
        "below",
    )
    out["final-state-not-2**23"] = (
        _degenerate_plane(coded=FINAL[:12] + ((1 << 23) + 1).to_bytes(4, "little")),
        SHAPE,
        "final states",
    )
    out["coded-byte-unread"] = (_degenerate_plane(coded=FINAL + b"\x00"), SHAPE, "left unread")
    out["d-below-16"] = (_degenerate_plane(coded=FINAL[:15]), SHAPE, "D = 15")
    out["byte-after-last-plane"] = (_degenerate_plane() + b"\x00", SHAPE, "after the last plane")

    # "a run r < 255 with r ≥ W − x": r = W − x exactly, at x = 0 and mid-row, and r > W − x
    out["run-of-W-at-x-0"] = (
        _degenerate_plane(tables=ZERO + RUN_5),
        SHAPE,
        "r = 5 at x = 0 runs past the end",
    )
    out["run-of-W-minus-x-mid-row"] = (  # W = 5: r = 2, s = 0 at x = 2, then r = 2 at x = 3
        _degenerate_plane(tables=ZERO + RUN_2),
        SHAPE,
        "r = 2 at x = 3 runs past the end",
    )
    out["run-longer-than-row"] = (
        _degenerate_plane(tables=ZERO + RUN_5),
        (1, 3, 4),
        "r = 5 at x = 0 runs past the end",
    )
    out["run-past-the-row-end-in-a-real-stream"] = (*_run_past_the_row_end(), "r = 20 at x = 0 runs past")

    # banded group planes (version 8): B, then each band's D and bytes
    spikes, bands = SPIKES["spikes-1x24x300"][0], 3
    shape = spikes.shape
    head, coded = _band_parts(0, _symbols(spikes[0], 0), bands)

    def banded(count: int, parts: list[bytes]) -> bytes:
        return head + bytes([count]) + b"".join(len(c).to_bytes(4, "little") + c for c in parts)

    assert _spec_decode(banded(bands, coded), *shape) == spikes.tobytes()
    out["bands-0"] = (banded(0, coded), shape, "B = 0 bands")
    out["bands-above-H"] = (banded(25, coded), shape, "B = 25 bands in 24 rows")
    out["band-missing"] = (banded(bands, coded)[: -len(coded[-1]) - 4], shape, "too few bytes")
    # B = 2: band 0 is then rows 0-11, and the 8 rows' coded samples run out
    out["band-count-short"] = (banded(2, coded), shape, "too few bytes")
    out["band-byte-unread"] = (banded(bands, [coded[0] + b"\x00", *coded[1:]]), shape, "left unread")
    out["band-d-below-16"] = (
        head + bytes([1]) + (15).to_bytes(4, "little") + coded[0][:15],
        shape,
        "D = 15",
    )
    out["band-tables-0xC0"] = (
        bytes([head[0], GROUPS | NO_RUNS]) + head[2:] + bytes([bands]),
        shape,
        "tables byte 0x40 or 0xC0",
    )
    return out


CORRUPTIONS = _corruptions()
RUN_CORRUPTIONS = sorted(name for name in CORRUPTIONS if name.startswith("run-") and "table" not in name)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_payloads_are_rejected_by_both(name: str) -> None:
    payload, (c, h, w), message = CORRUPTIONS[name]
    with pytest.raises(ValueError, match=message):
        _spec_decode(payload, c, h, w)
    for threads in (1, 3):
        with pytest.raises(WireFormatError):
            ctx_decode(payload, c, h, w, threads=threads)


@pytest.mark.parametrize("name", RUN_CORRUPTIONS)
def test_a_run_past_its_row_is_refused_as_such(name: str) -> None:
    payload, (c, h, w), _ = CORRUPTIONS[name]
    with pytest.raises(WireFormatError, match="run past the end of its row"):
        ctx_decode(payload, c, h, w)


def test_the_same_runs_fit_a_wider_row() -> None:
    """The refused payloads are fine once the row is one column wider: only r ≥ W − x made them corrupt."""
    for tables, shape in [(ZERO + RUN_5, (1, 3, 6)), (ZERO + RUN_2, (1, 3, 6))]:
        payload = _degenerate_plane(tables=tables)
        assert _spec_decode(payload, *shape) == _values(shape, 0)
        assert ctx_decode(payload, *shape).tobytes() == _values(shape, 0)


def test_a_group_plane_is_refused_in_a_record_before_version_4() -> None:
    """Bit 6 means a group plane from version 4 on; before, the same byte is a table count above 16."""
    payload, shape, expected = ACCEPTED["groups-all-ones"]
    assert _spec_decode(payload, *shape) == expected
    with pytest.raises(ValueError, match="K = 65 > 16"):
        _spec_decode_planes(payload, *shape, version=3)
    with pytest.raises(WireFormatError, match="impossible number of tables"):
        ctx_decode(payload, *shape, group_planes=False)


# --- banded group planes (version 8)


def _banded_residual(path: Path) -> Planes:
    """A still scene's residual large enough for the compiled encoder to band (720 x 768 = 552,960 samples: 2
    bands of 360 rows): zeros but for two real frame differences, one inside band 0 and one across the cut."""
    a, b = (_read_frame(path, i) for i in (0, 1))
    difference = np.subtract(b, a)[..., 1]
    plane = np.zeros((1, 720, 768), np.uint8)
    plane[0, 100:140] = difference[200:240]
    plane[0, 340:380] = difference[300:340]  # rows 340-359 in band 0, 360-379 in band 1
    return plane


def test_spec_decoder_reads_compiled_banded_planes(pets_cut: Path) -> None:
    """A band is a group plane of its rows with the plane's tables: its first row's neighbours above are
    outside, its events counted from 0 on states of its own. The compiled bytes follow that to the event."""
    planes = _banded_residual(pets_cut)
    assert ctx_bands(720, 768) == 2
    (decoded,) = _check(planes)
    assert decoded.bands == 2
    symbols = _symbols(planes[0], decoded.centre)
    assert decoded.events == _group_events(symbols[:360]) + _group_events(symbols[360:])
    payload = ctx_encode(planes)
    assert all(ctx_encode(planes, threads=threads) == payload for threads in (1, 2, 3))
    for threads in (1, 2):
        assert ctx_decode(payload, 1, 720, 768, threads=threads).tobytes() == planes.tobytes()
    with pytest.raises(ValueError, match="bits 6 and 7"):
        _spec_decode_planes(payload, 1, 720, 768, version=7)
    with pytest.raises(WireFormatError, match="group plane without runs"):
        ctx_decode(payload, 1, 720, 768, banded_planes=False)


@pytest.mark.parametrize("bands", [1, 2, 5, 7, 16])
@pytest.mark.parametrize("name", sorted(SPIKES))
def test_compiled_decoder_reads_spec_bands(name: str, bands: int) -> None:
    """Any B from 1 to H is valid, not only the compiled encoder's 2 to 4: bands of uneven rows, one band, more
    bands than the decoder runs at once; read plane by plane and band by band, on one thread or several."""
    planes, _ = SPIKES[name]
    channels, height, width = planes.shape
    payload = b"".join(_spec_encode_bands(0, _symbols(plane, 0), bands) for plane in planes)
    decoded = _spec_decode_planes(payload, channels, height, width)
    assert [p.bands for p in decoded] == [bands] * channels
    assert b"".join(p.values for p in decoded) == planes.tobytes()
    for threads in (1, 3):
        assert ctx_decode(payload, channels, height, width, threads=threads).tobytes() == planes.tobytes()
    with pytest.raises(WireFormatError, match="group plane without runs"):
        ctx_decode(payload, channels, height, width, banded_planes=False)


def test_bits_6_and_7_are_a_banded_plane_only_from_version_8() -> None:
    """Versions 4 to 7 refuse a group plane with bit 7 set; from 8 the same bytes are a banded plane, whose B
    is then the first byte of D (211 here, more bands than rows)."""
    payload = ctx_encode(SYNTHETIC["noise-0-1x17x33"])
    bad = bytes([payload[0], payload[1] | NO_RUNS]) + payload[2:]
    with pytest.raises(ValueError, match="bits 6 and 7"):
        _spec_decode_planes(bad, 1, 17, 33, version=7)
    with pytest.raises(WireFormatError, match="group plane without runs"):
        ctx_decode(bad, 1, 17, 33, banded_planes=False)
    with pytest.raises(ValueError, match="B = 211 bands in 17 rows"):
        _spec_decode(bad, 1, 17, 33)
    with pytest.raises(WireFormatError, match="impossible number of bands"):
        ctx_decode(bad, 1, 17, 33)
