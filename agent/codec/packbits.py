"""PackBits (Apple / TIFF compression 32773), one independent stream per row, vectorised with numpy.

Why PackBits at all: residuals hold long runs of exact zeros, and collapsing them before zstd shortens zstd's
input, which is what keeps the entropy stage cheap on a Raspberry Pi.

Why per row: TIFF forbids runs that cross rows, so the concatenation of our rows *is* a TIFF PackBits strip
(``agent.codec.tiff.wrap_tiff`` proves it against Pillow), and a packet overflowing its row is detectably
corrupt.

Packet format (one header byte, read as signed):
    0..127      n+1 literal bytes follow
    -127..-1    the next byte is repeated 1-n times (2..128)
    -128        no-op: never emitted, accepted when decoding

The encoder makes every run of 3+ equal bytes a repeat packet. A run of 2 is one too when it sits between row
edges and such runs (2 bytes instead of a 3-byte literal); next to literals it joins them, which never costs
more. So the output is never longer than all-literal packing, and on pets2009 residuals it is a little
shorter than libtiff's (the bytes differ where the two choose differently for runs of 2).

Decoding is strict: the stream must end exactly with the packet that completes the last row (a trailing
no-op is trailing garbage), and it may not be longer than 2 bytes per output byte plus one no-op per row.

Speed: the compiled encoder (``agent/codec/_native.c``, byte for byte the same output) is used when built.
Without it, the numpy encoder below finds runs and segments with boolean masks, block by block of rows (so
the passes stay in cache), and does the rest with numpy on per-segment arrays; it never loops per byte or per
packet in Python. The decoder must walk the header chain (each header says where the next one is), which is
sequential; it does so in a tight loop of one iteration per *packet* (~50-90 ns each), then builds the output
with one ``np.repeat``. A 128-byte zero run is a single 2-byte packet, so residuals have few packets. Both
numpy versions are a few times slower than libtiff's C (through Pillow) on noisy residuals, and as fast on
mostly-zero ones.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from agent.codec import native
from agent.errors import WireFormatError

__all__ = ["decode_rows", "encode_rows", "encode_rows_numpy"]

_MAX_PACKET = 128
_BLOCK_BYTES = 1 << 17  # per-byte passes work on this much at a time
_NOOP = 0x80
_INT32_LIMIT = 1 << 30  # inputs at least this long index with int64 (output can be 1/128 longer)

# Indexed by header byte: how far the next header is, and how many bytes the packet produces.
_STEP = tuple(h + 2 if h < _NOOP else 1 if h == _NOOP else 2 for h in range(256))
_GAIN = np.array([h + 1 if h < _NOOP else 0 if h == _NOOP else 257 - h for h in range(256)], dtype=np.intp)

Bytes = bytes | bytearray | memoryview
IntArray = npt.NDArray[np.intp]
Index = npt.NDArray[np.signedinteger[Any]]
IntT = TypeVar("IntT", bound=np.integer)


def _exclusive_cumsum(values: npt.NDArray[IntT]) -> npt.NDArray[IntT]:
    out = np.zeros_like(values)
    np.cumsum(values[:-1], out=out[1:])
    return out


def encode_rows(data: Bytes | npt.NDArray[np.uint8], row_bytes: int) -> bytes:
    """Pack each ``row_bytes``-long row of ``data`` as its own PackBits stream; return them concatenated.

    ``data`` must hold a whole number of rows (an empty buffer gives an empty stream). Arrays must be uint8;
    they are read in C order.
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"PackBits packs uint8 data, got an array of {data.dtype}")
        src = np.ascontiguousarray(data).reshape(-1)
    else:
        src = np.frombuffer(data, dtype=np.uint8)
    total = len(src)
    if row_bytes < 1:
        raise ValueError(f"row_bytes must be ≥ 1, got {row_bytes}")
    if total % row_bytes:
        raise ValueError(f"{total} bytes is not a whole number of {row_bytes}-byte rows")
    if total == 0:
        return b""
    if native.AVAILABLE:
        return native.packbits(src, row_bytes)
    return _encode_rows_numpy(src, row_bytes)


def encode_rows_numpy(data: Bytes | npt.NDArray[np.uint8], row_bytes: int) -> bytes:
    """:func:`encode_rows` with numpy only: the fallback without the compiled module, and its reference."""
    src = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if len(src) == 0:
        return b""
    return _encode_rows_numpy(src, row_bytes)


def _encode_rows_numpy(src: npt.NDArray[np.uint8], row_bytes: int) -> bytes:
    total = len(src)
    # The per-byte passes run block by block (whole rows) over reused scratch, so they stay in cache.
    # Positions fit int32 for any real frame, which halves the memory traffic of everything below.
    index: type[np.signedinteger[Any]] = np.int32 if total < _INT32_LIMIT else np.int64
    rows_per_block = max(1, _BLOCK_BYTES // row_bytes)
    scratch = _Scratch(rows_per_block * row_bytes, row_bytes)
    starts: list[Index] = []
    repeats: list[npt.NDArray[np.bool_]] = []
    literals: list[npt.NDArray[np.uint8]] = []
    for offset in range(0, total, rows_per_block * row_bytes):
        seg_start, seg_repeat, literal = scratch.segments(src[offset : offset + rows_per_block * row_bytes])
        starts.append(seg_start.astype(index) + offset)
        repeats.append(seg_repeat)
        literals.append(literal)
    seg_start = np.concatenate(starts)
    seg_repeat = np.concatenate(repeats)
    seg_len = np.empty_like(seg_start)
    seg_len[:-1] = seg_start[1:]
    seg_len[-1] = total
    seg_len -= seg_start

    # Lay the output out as if every segment were one packet (most are), then redo the longer ones.
    # A segment of n bytes in k packets takes 2k bytes as repeats, n + k as literals. (Arithmetic on the
    # flags rather than np.where, whose random branches cost ten times more here.)
    packets = (seg_len + (_MAX_PACKET - 1)) // _MAX_PACKET
    out_len = packets + seg_len - (seg_len - packets) * seg_repeat
    out_start = _exclusive_cumsum(out_len)
    out_total = int(out_start[-1] + out_len[-1])
    out = np.empty(out_total, dtype=np.uint8)
    is_literal = np.ones(out_total, dtype=bool)
    _put_packets(out, is_literal, out_start, np.minimum(seg_len, _MAX_PACKET), seg_repeat, seg_start, src)
    long = np.flatnonzero(packets > 1)
    if len(long):
        per_seg = packets[long]
        piece = np.arange(int(per_seg.sum()), dtype=index) - np.repeat(_exclusive_cumsum(per_seg), per_seg)
        pkt_repeat = np.repeat(seg_repeat[long], per_seg)
        pkt_len = np.minimum(np.repeat(seg_len[long], per_seg) - _MAX_PACKET * piece, _MAX_PACKET)
        # A repeat run of 128k+1 would leave a 1-byte tail, which no repeat packet can say: end on 127 + 2.
        lone_tail = np.flatnonzero(pkt_repeat & (pkt_len == 1))
        pkt_len[lone_tail - 1] -= 1
        pkt_len[lone_tail] = 2
        pkt_out = np.repeat(out_start[long], per_seg) + piece * (
            _MAX_PACKET + 1 - (_MAX_PACKET - 1) * pkt_repeat
        )
        pkt_start = np.repeat(seg_start[long], per_seg)  # any byte of a repeat run will do
        _put_packets(out, is_literal, pkt_out, pkt_len, pkt_repeat, pkt_start, src)
    out[is_literal] = np.concatenate(literals)
    return out.tobytes()


def _put_packets(
    out: npt.NDArray[np.uint8],
    is_literal: npt.NDArray[np.bool_],
    at: Index,
    length: Index,
    repeat: npt.NDArray[np.bool_],
    start: Index,
    src: npt.NDArray[np.uint8],
) -> None:
    """Write headers (n-1 for a literal of n, 257-n = 1-n mod 256 for a repeat) and repeat bytes; mark the
    rest as literal bytes still to fill."""
    out[at] = ((length - 1) * (1 - 2 * repeat.astype(length.dtype))).astype(np.uint8)
    is_literal[at] = False
    value_at = at[repeat] + 1
    out[value_at] = src[start[repeat]]
    is_literal[value_at] = False


class _Scratch:
    """Boolean work arrays for one block of whole rows, each padded by two bytes so that "the next byte" and
    "the byte after" are plain slices."""

    def __init__(self, block: int, row_bytes: int) -> None:
        self.row_bytes = row_bytes
        self.same, self.window, self.repeat, self.pair, self.tmp = (
            np.zeros(block + 2, dtype=bool) for _ in range(5)
        )
        self.row_start = np.zeros(block + 2, dtype=bool)
        self.row_start[0 : block + 1 : row_bytes] = True

    def segments(
        self, src: npt.NDArray[np.uint8]
    ) -> tuple[IntArray, npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
        """Segment starts (each repeat run alone, or a maximal literal stretch, anew at every row start),
        whether each is a repeat run, and the block's literal bytes in order."""
        n = len(src)
        row_bytes, row_start, tmp = self.row_bytes, self.row_start, self.tmp
        # same[i]: byte i continues the run of byte i-1 (never across a row start).
        same = self.same
        same[0] = False
        same[n:] = False
        np.equal(src[1:], src[:-1], out=same[1:n])
        same[0:n:row_bytes] = False
        # Byte i is in a run of 3+ iff some window of three equal bytes covers it.
        window = np.logical_and(same[1 : n + 1], same[2 : n + 2], out=self.window[:n])
        repeat = self.repeat
        repeat[:n] = window
        repeat[n:] = False
        repeat[1:n] |= window[:-1]
        repeat[2:n] |= window[:-2]
        # A run of exactly 2 starting at i is a repeat packet only between row edges and runs of 3+.
        pair = np.greater(
            same[1 : n + 1], np.logical_or(same[:n], same[2 : n + 2], out=tmp[:n]), out=self.pair[:n]
        )
        pair[1:] &= np.logical_or(row_start[1:n], repeat[: n - 1], out=tmp[: n - 1])
        pair &= np.logical_or(row_start[2 : n + 2], repeat[2 : n + 2], out=tmp[:n])
        in_repeat = repeat[:n]
        in_repeat |= pair
        in_repeat[1:] |= pair[:-1]
        # A segment starts where a repeat run starts, where repeat and literal alternate, and at row starts.
        first = np.greater(in_repeat, same[:n], out=tmp[:n])
        first[1:] |= np.not_equal(in_repeat[1:], in_repeat[:-1], out=window[1:])
        first[0:n:row_bytes] = True
        seg_start = np.flatnonzero(first)
        return seg_start, in_repeat[seg_start], src[np.logical_not(in_repeat, out=window)]


def decode_rows(data: Bytes, row_bytes: int, rows: int) -> bytes:
    """Unpack ``rows`` per-row PackBits streams of ``row_bytes`` bytes each, concatenated in ``data``.

    Raises ``WireFormatError``, and nothing else, on truncated input, a packet that overflows its row, bytes
    after the last row, or impossible dimensions. Never allocates more than ``rows * row_bytes`` output bytes;
    working memory is a few bytes per input byte, and input longer than the module docstring allows is refused
    before any work.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"PackBits: input must be a byte buffer, not {type(data).__name__}")
    if rows < 0 or row_bytes < 0:
        raise WireFormatError(f"PackBits: impossible dimensions: {rows} rows of {row_bytes} bytes")
    buf = bytes(data)
    size = len(buf)
    want = rows * row_bytes
    # One-byte literals cost 2 bytes per byte; allow a no-op per row on top, as foreign encoders may add some.
    if size > 2 * want + rows:
        raise WireFormatError(
            f"PackBits: {size} bytes is longer than any valid stream for {rows} rows of {row_bytes} bytes"
        )
    if want == 0:
        if size:
            raise WireFormatError(f"PackBits: {size} trailing bytes after the last of {rows} rows")
        return b""
    if size == 0:
        raise WireFormatError(f"PackBits: input truncated: empty, expected {rows} rows of {row_bytes} bytes")

    # The header chain is sequential by nature: walk it once, one iteration per packet.
    is_header = bytearray(size)
    step = _STEP
    pos = 0
    while pos < size:
        is_header[pos] = 1
        pos += step[buf[pos]]

    arr = np.frombuffer(buf, dtype=np.uint8)
    header_mask = np.frombuffer(is_header, dtype=bool)
    head_pos = np.flatnonzero(header_mask)
    head = arr[head_pos]
    gain = _GAIN[head]
    produced = np.cumsum(gain)
    last = int(np.searchsorted(produced, want))  # the packet that completes the last row
    if last == len(produced) or (pos > size and last == len(produced) - 1):
        done = min(int(produced[-1] if pos == size else produced[-1] - gain[-1]), want)
        raise WireFormatError(
            f"PackBits: input truncated: {size} bytes decode to {done} of {want} bytes "
            f"({rows} rows × {row_bytes})"
        )
    if last + 1 < len(produced):
        extra = size - int(head_pos[last + 1])
        raise WireFormatError(f"PackBits: {extra} trailing bytes after the last of {rows} rows")

    out_start = produced - gain
    real = head != _NOOP
    if not real.all():
        head_pos, head, gain, out_start = head_pos[real], head[real], gain[real], out_start[real]
    crossing = np.flatnonzero(out_start // row_bytes != (out_start + gain - 1) // row_bytes)
    if len(crossing):
        bad = int(crossing[0])
        raise WireFormatError(
            f"PackBits: packet at input byte {int(head_pos[bad])} writes {int(gain[bad])} bytes from output "
            f"byte {int(out_start[bad])}, past the end of its {row_bytes}-byte row"
        )

    # Every payload byte is an output "unit": a literal byte counts once, a repeat byte its run length.
    values = arr[~header_mask]
    repeat = head > _NOOP
    payload_len = gain - (gain - 1) * repeat
    counts = np.ones(len(values), dtype=np.intp)
    counts[_exclusive_cumsum(payload_len)[repeat]] = gain[repeat]
    return np.repeat(values, counts).tobytes()
