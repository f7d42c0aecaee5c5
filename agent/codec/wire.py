"""Wire format v7 (and v6, v5, v4, v3, v2, v1): one self-describing, checksummed record per frame.

The byte layout is specified in ``docs/wire-format.md``; this module follows that document (a test checks that
the version there matches :data:`VERSION`). A record carries the lowest version that has all its stages, its
frame hash and (with CTX) its plane modes, so a SHA-256 record without the CTX stage is still a valid v1 record
for v1 decoders. Everything is little-endian.
Parsing untrusted bytes raises only
:class:`~agent.errors.WireFormatError`, and never trusts a declared size beyond :class:`Limits`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

import xxhash

from agent.errors import WireFormatError

MAGIC = b"CCTV"
VERSION = 8
"""The newest version this code reads and writes; it reads every version from 1."""
GROUP_PLANES_SINCE = 4
"""The version whose CTX stage may hold group planes (``docs/wire-format.md``), which the encoder writes."""
BANDED_PLANES_SINCE = 8
"""The version whose CTX stage may hold banded group planes, which the encoder writes for large planes."""

# magic, version, kind, flags, pixel_format, header_length, width, height, tolerance, stage_count,
# payload_length, seq, key_seq, ref_seq, capture_time_ns, ssim, frame_hash
_FIXED = struct.Struct("<4sBBBBHHHBBIQQQqf32s")
FIXED_SIZE = _FIXED.size  # 88
CRC_SIZE = 4
MAX_CAMERA_ID = 64
MAX_STAGES = 8
CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")

FLAG_CLOCK_SYNCED = 0x01
_KNOWN_FLAGS = FLAG_CLOCK_SYNCED


class Kind(IntEnum):
    """Whether a record starts a key group or belongs to one."""

    KEY = 0
    MEMBER = 1


class PixelFormat(IntEnum):
    """Pixel layout of the reconstructed frame; the value is the channel count."""

    GRAY8 = 1
    BGR8 = 3

    @property
    def channels(self) -> int:
        return int(self.value)


class Stage(IntEnum):
    """Transforms applied by the encoder, listed in the order it applied them.

    Pixel stages work on planar ``(C, H, W)`` uint8 arrays; byte stages on the planes serialised plane by plane,
    row by row. The decoder undoes them in reverse order.
    """

    RESIDUAL = 1
    """Exact difference from the reference frame, mod 256."""
    RESIDUAL_Q = 2
    """Difference from the reference quantised to steps of 2T+1 (near-lossless, |error| ≤ T)."""
    QUANTIZE = 3
    """Pixel values quantised to steps of 2T+1 (near-lossless intra, |error| ≤ T)."""
    RCT = 4
    """Reversible colour transform (G, B−G+128, R−G+128) mod 256, for BGR frames."""
    MED = 5
    """LOCO-I/JPEG-LS median edge detector, residual mod 256."""
    PACKBITS = 6
    """TIFF PackBits, one stream per plane row."""
    ZSTD = 7
    """Zstandard frame."""
    CTX = 8
    """Context-modelled rANS over each plane (wire format ≥ 2)."""
    RESIDUAL_QG = 9
    """BGR only: G's difference from the reference quantised as RESIDUAL_Q's; B and R take G's error and are coded
    exactly beside it, as (B'−G'+128, R'−G'+128) moves (wire format ≥ 5)."""
    QUANTIZE_G = 10
    """BGR only: G's values quantised as QUANTIZE's; B and R take G's error and are coded exactly beside it, as
    B'−G'+128 and R'−G'+128 (wire format ≥ 5)."""
    MED_CHROMA = 11
    """MED on planes 1 and 2 only, plane 0 left as it is (wire format ≥ 5)."""
    BLOCK_CHROMA = 12
    """BGR only: planes 1 and 2 laid out by 2×2 block, each block's top-left sample first and its other three as
    differences from it, for decoded 4:2:0 video whose chroma is constant over aligned 2×2 blocks (wire format
    ≥ 6)."""
    JPEG_CHROMA = 13
    """BGR only, even width and height, intra (exact, or after QUANTIZE_G): G, then B and R as residuals against
    JFIF's YCbCr → RGB conversion of two quarter-size chroma planes upsampled as libjpeg does, which follow as a
    fourth plane; for stills decoded from 4:2:0 JPEGs (wire format ≥ 6)."""
    YUV420 = 14
    """BGR only, even width and height: the frame is ``agent.codec.yuv.to_bgr`` of a yuv420p picture, and the record
    codes that picture (1.5 samples a pixel) as one plane, Y above U and V side by side; the later stages work on
    that plane, a residual against the reference's picture (wire format ≥ 7)."""
    QUANTIZE_Y = 15
    """After YUV420, 1 ≤ T ≤ 32: the picture's Y rows on the lattice of :func:`luma_step`'s step, chosen so that
    every B, G and R sample stays within T, its chroma rows exact (wire format ≥ 7)."""
    RESIDUAL_QY = 16
    """After YUV420, 1 ≤ T ≤ 32: the Y rows' difference from the reference on that lattice (int8 codes), the
    chroma rows' exact difference mod 256 (wire format ≥ 7)."""


STAGE_SINCE = {
    Stage.CTX: 2,
    Stage.RESIDUAL_QG: 5,
    Stage.QUANTIZE_G: 5,
    Stage.MED_CHROMA: 5,
    Stage.BLOCK_CHROMA: 6,
    Stage.JPEG_CHROMA: 6,
    Stage.YUV420: 7,
    Stage.QUANTIZE_Y: 7,
    Stage.RESIDUAL_QY: 7,
}
"""The wire format version that introduced a stage (the others are in every version)."""


class FrameHash(IntEnum):
    """How the record's 32-byte ``frame_hash`` field was made; the version says which (not a field of its own).

    SHA-256 (versions 1 and 2) took 3.6 ms a 1080p frame on the team's x86 VM, which has SHA instructions
    (a tenth of the encoder's time there; a Raspberry Pi 4's CPU has none, so there it costs many times more).
    XXH3-128 (version 3) took 0.11 ms, and is as good at what the field is for: catching a decoder or a
    reference that rebuilt the wrong pixels. The record's CRC-32 guards the bytes in transit; neither is a
    defence against forgery, which needs a key (TLS on the MQTT link).
    """

    SHA256 = 1
    """SHA-256 digest (32 bytes)."""
    XXH3_128 = 3
    """XXH3-128 digest with seed 0, in xxHash's canonical (big-endian) byte order, then 16 zero bytes."""


HASH_SINCE = {FrameHash.SHA256: 1, FrameHash.XXH3_128: 3}
"""The wire format version that introduced a frame hash; a version-3 record always carries XXH3-128."""
HASH_SIZE = 32
_HASH_NAMES = {FrameHash.SHA256: "SHA-256", FrameHash.XXH3_128: "XXH3-128"}


def hash_kind_of(version: int) -> FrameHash:
    """The frame hash a record of ``version`` carries."""
    return FrameHash.XXH3_128 if version >= HASH_SINCE[FrameHash.XXH3_128] else FrameHash.SHA256


def hash_pixels(data: bytes | memoryview, kind: FrameHash) -> bytes:
    """The ``frame_hash`` field for the frame's pixels (W·H·C bytes, row-major, channels interleaved)."""
    if kind is FrameHash.XXH3_128:
        return xxhash.xxh3_128_digest(data) + bytes(HASH_SIZE - 16)
    return hashlib.sha256(data).digest()


def record_version(
    stages: tuple[Stage, ...],
    hash_kind: FrameHash | None = None,
    group_planes: bool = False,
    banded_planes: bool = False,
) -> int:
    """The lowest version that can carry ``stages``, a frame hash of ``hash_kind`` and, with ``group_planes``
    (``banded_planes``), a CTX stage that may hold group planes (banded ones): what :func:`pack_record` writes."""
    since_hash = 1 if hash_kind is None else HASH_SINCE[hash_kind]
    since_planes = 1
    if Stage.CTX in stages:
        since_planes = (
            BANDED_PLANES_SINCE if banded_planes else GROUP_PLANES_SINCE if group_planes else since_planes
        )
    return max((since_hash, since_planes, *(STAGE_SINCE.get(s, 1) for s in stages)))


_FIRST_PIXEL_STAGES = (
    Stage.RESIDUAL,
    Stage.RESIDUAL_Q,
    Stage.QUANTIZE,
    Stage.RESIDUAL_QG,
    Stage.QUANTIZE_G,
    Stage.QUANTIZE_Y,
    Stage.RESIDUAL_QY,
)
"""Mutually exclusive: what the frame is coded against (a reference, a quantiser, both or neither)."""
_PIXEL_STAGE_ORDER = (
    (Stage.YUV420,),
    _FIRST_PIXEL_STAGES,
    (Stage.RCT, Stage.JPEG_CHROMA),
    (Stage.BLOCK_CHROMA,),
    (Stage.MED, Stage.MED_CHROMA),
    (Stage.PACKBITS,),
    (Stage.ZSTD, Stage.CTX),
)
REFERENCE_STAGES = frozenset({Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.RESIDUAL_QG, Stage.RESIDUAL_QY})
QUANTISING_STAGES = frozenset(
    {
        Stage.RESIDUAL_Q,
        Stage.QUANTIZE,
        Stage.RESIDUAL_QG,
        Stage.QUANTIZE_G,
        Stage.QUANTIZE_Y,
        Stage.RESIDUAL_QY,
    }
)
LUMA_QUANTISERS = frozenset({Stage.QUANTIZE_Y, Stage.RESIDUAL_QY})
"""The quantisers of YUV420's Y rows (the chroma rows stay exact)."""
COLOUR_FOLLOWS_G = frozenset({Stage.RESIDUAL_QG, Stage.QUANTIZE_G})
WITH_YUV420 = frozenset(
    {Stage.YUV420, Stage.RESIDUAL, Stage.MED, Stage.PACKBITS, Stage.ZSTD, Stage.CTX, *LUMA_QUANTISERS}
)
"""The stages a YUV420 record may list: exact ones that work on any plane, and the Y rows' quantisers (any other
quantiser's error, in YUV terms, would not be bounded by the record's tolerance in BGR terms)."""
LUMA_GAIN = 76312
"""The conversion's luma term is ⌊(Y − 16) · LUMA_GAIN / 65536⌋ (8 · 9539: ``agent.codec.yuv``)."""
MAX_LUMA_TOLERANCE = 32
"""QUANTIZE_Y and RESIDUAL_QY take T up to this (the encoder's own limit); :func:`luma_step` is checked up to it."""


def luma_step(tolerance: int) -> int:
    """The step of YUV420's Y lattice at ``tolerance`` (1..32; else 0: no such stage): ⌊2 · 65536 · T / LUMA_GAIN⌋
    + 1, the largest step for which one of the two lattice points around any Y has a luma term within T of
    Y's (the encoder picks that one), so every B, G and R sample is within T (``tests/unit/test_yuv420.py``
    checks every T, Y and lattice offset). 2 at T = 1, 4 at T = 2: a plain quantiser, whose error is the same
    on both sides, could only use 2t + 1 with ⌈1.164 t⌉ ≤ T (none at T = 1, 3 at T = 2)."""
    if not 1 <= tolerance <= MAX_LUMA_TOLERANCE:
        return 0
    return (2 * 65536 * tolerance) // LUMA_GAIN + 1


"""The first stages that code B and R beside G themselves (RCT's planes, with G's error): never with RCT."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a decoder enforces before it allocates anything a record declares."""

    max_width: int = 8192
    max_height: int = 8192
    max_frame_bytes: int = 64 * 1024 * 1024
    """Cap on width × height × channels."""

    def max_payload(self, frame_bytes: int, rows: int) -> int:
        """Largest payload any valid stage list can produce for a frame of that size (PackBits worst case)."""
        return frame_bytes + frame_bytes // 128 + rows + 1024


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """Everything a record says about its frame, except the coded pixels."""

    camera_id: str
    seq: int
    key_seq: int
    ref_seq: int
    """The record this one needs to decode; equal to ``seq`` when it is self-contained."""
    kind: Kind
    capture_time_ns: int
    width: int
    height: int
    pixel_format: PixelFormat
    stages: tuple[Stage, ...]
    frame_hash: bytes
    """The reconstructed frame's pixels (interleaved, row-major) hashed as ``hash_kind`` says: :func:`hash_pixels`."""
    tolerance: int = 0
    ssim: float = 1.0
    clock_synced: bool = True
    hash_kind: FrameHash = FrameHash.XXH3_128
    """What the encoder writes (version 3 on); a parsed record has what its version says."""
    group_planes: bool = True
    """Its CTX stage may hold group planes: what the encoder writes (version 4); a parsed record has what its
    version says (an older record re-packed stays at its version). Without a CTX stage it means nothing and
    is True, as the encoder makes it."""
    banded_planes: bool = False
    """Its CTX stage may hold banded group planes (version 8): the encoder sets it where a plane is large
    enough to be banded (``native.banded``); a parsed record has what its version says."""

    @property
    def channels(self) -> int:
        return self.pixel_format.channels

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * self.channels

    @property
    def coded_planes(self) -> int:
        """Planes the entropy stage holds: C, 4 with JPEG_CHROMA (G, two residuals, the quarter planes), 1 with
        YUV420 (the picture)."""
        if Stage.YUV420 in self.stages:
            return 1
        return 4 if Stage.JPEG_CHROMA in self.stages else self.channels

    @property
    def coded_height(self) -> int:
        """Rows of each coded plane: H, or H·3/2 with YUV420 (Y, then the chroma rows)."""
        return self.height + self.height // 2 if Stage.YUV420 in self.stages else self.height

    @property
    def coded_shape(self) -> tuple[int, int, int]:
        """(planes, rows, columns) the pixel stages work on, and the reference the decoder holds for it."""
        return self.coded_planes, self.coded_height, self.width

    @property
    def coded_bytes(self) -> int:
        """Bytes of those planes: what the byte stages must give back."""
        return self.width * self.coded_height * self.coded_planes

    @property
    def needs_reference(self) -> bool:
        return any(s in REFERENCE_STAGES for s in self.stages)

    def validate(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Raise WireFormatError if the header is inconsistent or exceeds ``limits``.

        Every message is formatted only once its check fails: the encoder validates each record it packs, and
        formatting them all took 6 us of a 320x240 frame's 0.6 ms."""
        if CAMERA_ID_RE.fullmatch(self.camera_id) is None:
            raise WireFormatError(f"invalid camera id {self.camera_id!r}")
        for name in ("seq", "key_seq", "ref_seq"):
            value = getattr(self, name)
            if not 0 <= value < 2**64:
                raise WireFormatError(f"{name} out of range: {value}")
        if not -(2**63) <= self.capture_time_ns < 2**63:
            raise WireFormatError("capture time out of range")
        if not 1 <= self.width <= limits.max_width:
            raise WireFormatError(f"width {self.width} outside 1..{limits.max_width}")
        if not 1 <= self.height <= limits.max_height:
            raise WireFormatError(f"height {self.height} outside 1..{limits.max_height}")
        if self.frame_bytes > limits.max_frame_bytes:
            raise WireFormatError(
                f"frame of {self.frame_bytes} bytes exceeds the limit of {limits.max_frame_bytes}"
            )
        if not 0 <= self.tolerance <= 255:
            raise WireFormatError(f"tolerance {self.tolerance} out of range")
        if len(self.frame_hash) != HASH_SIZE:
            raise WireFormatError(f"frame hash must be {HASH_SIZE} bytes")
        if self.hash_kind is FrameHash.XXH3_128 and any(self.frame_hash[16:]):
            raise WireFormatError("an XXH3-128 frame hash must end in 16 zero bytes")
        _check_stages(self.stages, self.pixel_format, self.tolerance)
        if self.width % 2 or self.height % 2:
            for stage in (Stage.JPEG_CHROMA, Stage.YUV420):
                if stage in self.stages:
                    raise WireFormatError(
                        f"{stage.name} needs an even width and height, got {self.width}x{self.height}"
                    )
        needs_reference = self.needs_reference
        if self.kind is Kind.KEY:
            if needs_reference:
                raise WireFormatError("a key record must not reference another frame")
            if self.key_seq != self.seq:
                raise WireFormatError(f"key record seq={self.seq} names key_seq={self.key_seq}")
        elif self.key_seq > self.seq:
            raise WireFormatError(f"member seq={self.seq} names a later key {self.key_seq}")
        if needs_reference:
            if self.ref_seq >= self.seq:
                raise WireFormatError(f"record seq={self.seq} references seq={self.ref_seq}, not earlier")
            if self.ref_seq < self.key_seq:
                raise WireFormatError(f"record seq={self.seq} references outside its key group")
        elif self.ref_seq != self.seq:
            raise WireFormatError(f"self-contained record seq={self.seq} names ref_seq={self.ref_seq}")


@dataclass(frozen=True, slots=True)
class Record:
    """A header and its coded payload: one frame on the wire."""

    header: RecordHeader
    payload: bytes = field(repr=False)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise WireFormatError(message)


def _check_stages(stages: tuple[Stage, ...], pixel_format: PixelFormat, tolerance: int) -> None:
    problem = _stage_problem(stages, pixel_format, tolerance)
    if problem is not None:
        raise WireFormatError(problem)


@functools.lru_cache(maxsize=512)
def _stage_problem(stages: tuple[Stage, ...], pixel_format: PixelFormat, tolerance: int) -> str | None:
    """What is wrong with a stage list, or None: remembered, since an encoder packs a few lists over and over
    (the checks were a tenth of a 320×240 frame's encode time) and hostile ones are bounded by the cache."""
    try:
        _stage_rules(stages, pixel_format, tolerance)
    except WireFormatError as e:
        return str(e)
    return None


def _stage_rules(stages: tuple[Stage, ...], pixel_format: PixelFormat, tolerance: int) -> None:
    if len(stages) > MAX_STAGES:
        raise WireFormatError(f"too many stages ({len(stages)})")
    position = 0
    for stage in stages:
        while position < len(_PIXEL_STAGE_ORDER) and stage not in _PIXEL_STAGE_ORDER[position]:
            position += 1
        if position >= len(_PIXEL_STAGE_ORDER):
            raise WireFormatError(f"stages out of order or repeated: {_names(stages)}")
        position += 1
    _check(
        not (Stage.PACKBITS in stages and Stage.CTX in stages),
        "PACKBITS and CTX do not go together (CTX codes planes, PackBits output is not one)",
    )
    for stage in (
        Stage.RCT,
        Stage.MED_CHROMA,
        Stage.BLOCK_CHROMA,
        Stage.JPEG_CHROMA,
        Stage.YUV420,
        *COLOUR_FOLLOWS_G,
    ):
        if stage in stages:
            if pixel_format is not PixelFormat.BGR8:
                raise WireFormatError(f"{stage.name} needs a BGR frame")
    if any(s in COLOUR_FOLLOWS_G for s in stages):
        if Stage.RCT in stages:
            raise WireFormatError(
                f"{_names(stages)}: RESIDUAL_QG and QUANTIZE_G do their own colour transform"
            )
    if Stage.BLOCK_CHROMA in stages:
        if not (Stage.RCT in stages or any(s in COLOUR_FOLLOWS_G for s in stages)):
            raise WireFormatError(
                f"{_names(stages)}: BLOCK_CHROMA needs the chroma planes of RCT, RESIDUAL_QG or QUANTIZE_G"
            )
    if Stage.JPEG_CHROMA in stages:
        if not (
            not any(s in _FIRST_PIXEL_STAGES and s is not Stage.QUANTIZE_G for s in stages)
            and Stage.MED_CHROMA not in stages
        ):
            raise WireFormatError(
                f"{_names(stages)}: JPEG_CHROMA codes a frame on its own, exactly or after QUANTIZE_G (MED, if any, "
                "after it)"
            )
    if Stage.YUV420 in stages:
        if not all(s in WITH_YUV420 for s in stages):
            raise WireFormatError(
                f"{_names(stages)}: YUV420 goes with RESIDUAL, QUANTIZE_Y, RESIDUAL_QY, MED, PACKBITS, ZSTD and CTX "
                "only"
            )
    if any(s in LUMA_QUANTISERS for s in stages):
        if Stage.YUV420 not in stages:
            raise WireFormatError(f"{_names(stages)}: QUANTIZE_Y and RESIDUAL_QY quantise YUV420's Y rows")
        if luma_step(tolerance) <= 0:
            raise WireFormatError(
                f"QUANTIZE_Y and RESIDUAL_QY need a tolerance of 1..{MAX_LUMA_TOLERANCE}, got {tolerance}"
            )
    if any(s in QUANTISING_STAGES for s in stages):
        _check(tolerance >= 1, "a quantising stage needs tolerance ≥ 1")


def _names(stages: tuple[Stage, ...]) -> str:
    return "+".join(s.name for s in stages) or "(none)"


def pack_record(record: Record) -> bytes:
    """Serialise a record: fixed header, camera id, stages, payload, CRC-32 of all of it."""
    h = record.header
    h.validate(Limits(max_width=65535, max_height=65535, max_frame_bytes=2**40))
    camera = h.camera_id.encode("ascii")
    header_length = FIXED_SIZE + 1 + len(camera) + len(h.stages)
    flags = FLAG_CLOCK_SYNCED if h.clock_synced else 0
    if len(record.payload) >= 2**32:
        raise WireFormatError(f"payload of {len(record.payload)} bytes does not fit a record")
    version = record_version(h.stages, h.hash_kind, h.group_planes, h.banded_planes)
    if hash_kind_of(version) is not h.hash_kind:
        raise WireFormatError(
            f"a {_HASH_NAMES[h.hash_kind]} frame hash is not in wire format version {version} (group planes need "
            f"version {GROUP_PLANES_SINCE}, which carries XXH3-128)"
        )
    fixed = _FIXED.pack(
        MAGIC,
        version,
        h.kind,
        flags,
        h.pixel_format,
        header_length,
        h.width,
        h.height,
        h.tolerance,
        len(h.stages),
        len(record.payload),
        h.seq,
        h.key_seq,
        h.ref_seq,
        h.capture_time_ns,
        h.ssim,
        h.frame_hash,
    )
    body = b"".join((fixed, bytes([len(camera)]), camera, bytes(h.stages), record.payload))
    return body + struct.pack("<I", zlib.crc32(body))


def record_length(prefix: bytes | memoryview) -> int:
    """Total length of the record that starts ``prefix`` (needs the first 88 bytes)."""
    if len(prefix) < FIXED_SIZE:
        raise WireFormatError(f"truncated record: {len(prefix)} of at least {FIXED_SIZE} header bytes")
    magic, version = bytes(prefix[:4]), prefix[4]
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if not (1 <= version <= VERSION):
        raise WireFormatError(f"unsupported wire format version {version} (this decoder reads 1..{VERSION})")
    header_length, payload_length = (
        struct.unpack_from("<H", prefix, 8)[0],
        struct.unpack_from("<I", prefix, 16)[0],
    )
    if header_length <= FIXED_SIZE:
        raise WireFormatError(
            f"header length {header_length} leaves no room for a camera id after the {FIXED_SIZE}-byte fixed header"
        )
    return int(header_length) + int(payload_length) + CRC_SIZE


def unpack_record(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Record:
    """Parse and verify one record that fills ``data`` exactly."""
    view = memoryview(data).cast("B")
    total = record_length(view)
    if len(view) != total:
        raise WireFormatError(f"record is {len(view)} bytes but declares {total}")
    (crc,) = struct.unpack_from("<I", view, total - CRC_SIZE)
    _check(zlib.crc32(view[: total - CRC_SIZE]) == crc, "checksum mismatch: record is corrupted")
    header, header_length, payload_length = _unpack_header(view, limits)
    payload = bytes(view[header_length : header_length + payload_length])
    return Record(header, payload)


def unpack_header(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> RecordHeader:
    """Parse and check a record's header from its first bytes (at least its header length), as
    :func:`unpack_record` does but without the payload or the CRC: for a reader that has checked the CRC
    another way and wants to know whether the record is valid before reading all of it."""
    view = memoryview(data).cast("B")
    record_length(view)
    header_length = struct.unpack_from("<H", view, 8)[0]
    if len(view) < header_length:
        raise WireFormatError(f"truncated header: {len(view)} of {header_length} bytes")
    return _unpack_header(view, limits)[0]


def _unpack_header(view: memoryview, limits: Limits) -> tuple[RecordHeader, int, int]:
    """The header, its length and the payload's length; ``view`` starts at the record and holds at least the
    fixed header (:func:`record_length` checked that) and the header length it declares."""
    (
        _magic,
        version,
        kind,
        flags,
        pixel_format,
        header_length,
        width,
        height,
        tolerance,
        stage_count,
        payload_length,
        seq,
        key_seq,
        ref_seq,
        capture_time_ns,
        ssim,
        frame_hash,
    ) = _FIXED.unpack_from(view, 0)
    if kind not in (0, 1):
        raise WireFormatError(f"unknown record kind {kind}")
    if flags & ~_KNOWN_FLAGS != 0:
        raise WireFormatError(f"unknown flags 0x{flags:02x}")
    if pixel_format not in (1, 3):
        raise WireFormatError(f"unknown pixel format {pixel_format}")
    camera_length = view[FIXED_SIZE]
    if not (1 <= camera_length <= MAX_CAMERA_ID):
        raise WireFormatError(f"camera id length {camera_length} outside 1..{MAX_CAMERA_ID}")
    if header_length != FIXED_SIZE + 1 + camera_length + stage_count:
        raise WireFormatError(f"header length {header_length} disagrees with its camera id and stage count")
    camera_raw = bytes(view[FIXED_SIZE + 1 : FIXED_SIZE + 1 + camera_length])
    try:
        camera_id = camera_raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise WireFormatError(f"camera id is not ASCII: {camera_raw!r}") from e
    stage_bytes = bytes(view[FIXED_SIZE + 1 + camera_length : header_length])
    try:
        stages = tuple(Stage(b) for b in stage_bytes)
    except ValueError as e:
        raise WireFormatError(f"unknown stage in {stage_bytes.hex()}") from e
    if record_version(stages) > version:
        raise WireFormatError(
            f"stages {_names(stages)} need wire format version {record_version(stages)}, the record says {version}"
        )
    if not (ssim == ssim and -1.0 <= ssim <= 1.0):
        raise WireFormatError(f"SSIM {ssim} outside -1..1")
    header = RecordHeader(
        camera_id=camera_id,
        seq=seq,
        key_seq=key_seq,
        ref_seq=ref_seq,
        kind=Kind(kind),
        capture_time_ns=capture_time_ns,
        width=width,
        height=height,
        pixel_format=PixelFormat(pixel_format),
        stages=stages,
        frame_hash=bytes(frame_hash),
        tolerance=tolerance,
        ssim=float(ssim),
        clock_synced=bool(flags & FLAG_CLOCK_SYNCED),
        hash_kind=hash_kind_of(version),
        group_planes=version >= GROUP_PLANES_SINCE or Stage.CTX not in stages,
        banded_planes=version >= BANDED_PLANES_SINCE and Stage.CTX in stages,
    )
    header.validate(limits)
    max_payload = limits.max_payload(header.coded_bytes, header.coded_height * header.coded_planes)
    if payload_length > max_payload:
        raise WireFormatError(f"payload of {payload_length} bytes exceeds the bound {max_payload}")
    return header, header_length, payload_length
