"""Wrap a PackBits-coded image in a minimal baseline TIFF.

Why: it proves that ``encode_rows`` writes standard TIFF PackBits (the tests open the result with Pillow), and
it lets a person look at a residual in any image viewer when debugging.

The bytes are wrapped exactly as stored. Our frames are BGR, so a 3-channel image shows with red and blue
swapped: the TIFF says RGB because TIFF has no BGR, and swapping would mean re-encoding.
"""

from __future__ import annotations

import struct

__all__ = ["wrap_tiff"]

_SHORT = 3
_LONG = 4
_RATIONAL = 5
_PACKBITS = 32773
_PHOTOMETRIC = {1: 1, 3: 2}  # BlackIsZero for grey, RGB for three channels
_HEADER_SIZE = 8


def wrap_tiff(packed: bytes, width: int, height: int, channels: int) -> bytes:
    """A little-endian, single-strip, 8-bit TIFF whose strip is ``packed``.

    ``packed`` must be ``encode_rows(pixels, width * channels)`` of a ``height × width × channels`` image;
    it is not checked here (the TIFF is a debugging aid, a bad strip shows up when the file is opened).
    """
    if channels not in _PHOTOMETRIC:
        raise ValueError(f"a TIFF residual has 1 or 3 channels, got {channels}")
    if width < 1 or height < 1:
        raise ValueError(f"a TIFF needs a positive size, got {width}×{height}")

    entry_count = 13  # the entries listed below
    ifd_size = 2 + 12 * entry_count + 4
    extra_at = _HEADER_SIZE + ifd_size
    # Values longer than 4 bytes live after the IFD: BitsPerSample (3 channels only), X and Y resolution.
    bits_at = extra_at
    bits_size = 2 * channels if channels > 2 else 0
    xres_at = bits_at + bits_size
    yres_at = xres_at + 8
    strip_at = yres_at + 8

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        if kind == _SHORT and count == 1:
            return struct.pack("<HHIHH", tag, kind, count, value, 0)
        return struct.pack("<HHII", tag, kind, count, value)

    entries = [
        entry(256, _LONG, 1, width),  # ImageWidth
        entry(257, _LONG, 1, height),  # ImageLength
        entry(258, _SHORT, channels, bits_at) if bits_size else entry(258, _SHORT, 1, 8),  # BitsPerSample
        entry(259, _SHORT, 1, _PACKBITS),  # Compression
        entry(262, _SHORT, 1, _PHOTOMETRIC[channels]),  # PhotometricInterpretation
        entry(273, _LONG, 1, strip_at),  # StripOffsets
        entry(277, _SHORT, 1, channels),  # SamplesPerPixel
        entry(278, _LONG, 1, height),  # RowsPerStrip
        entry(279, _LONG, 1, len(packed)),  # StripByteCounts
        entry(282, _RATIONAL, 1, xres_at),  # XResolution
        entry(283, _RATIONAL, 1, yres_at),  # YResolution
        entry(284, _SHORT, 1, 1),  # PlanarConfiguration: chunky (pixel-interleaved)
        entry(296, _SHORT, 1, 1),  # ResolutionUnit: none
    ]
    parts = [
        struct.pack("<2sHI", b"II", 42, _HEADER_SIZE),
        struct.pack("<H", entry_count),
        *entries,
        struct.pack("<I", 0),  # no next IFD
        struct.pack(f"<{channels}H", *([8] * channels)) if bits_size else b"",
        struct.pack("<II", 1, 1),
        struct.pack("<II", 1, 1),
        bytes(packed),
    ]
    return b"".join(parts)
