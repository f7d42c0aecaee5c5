"""The CTX entropy stage: exact on any planes, bounded in size and allocation, and hostile bytes refused.

The codec-level tests (test_codec.py) run CTX on real footage, since it is the default; these pin the stage on
its own, including the golden bytes that ``docs/wire-format.md`` describes. ``test_ctx_spec.py`` decodes the
same bytes with a decoder written from that document alone.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.capture.files import iter_images
from agent.codec import native
from agent.codec import transforms as T
from agent.codec.decoder import FrameDecoder, decode_record
from agent.codec.encoder import FrameEncoder, frame_hash
from agent.codec.settings import CodecSettings
from agent.codec.wire import (
    FrameHash,
    Kind,
    PixelFormat,
    Record,
    RecordHeader,
    Stage,
    pack_record,
    record_version,
    unpack_record,
)
from agent.errors import WireFormatError


def test_the_compiled_coder_is_built() -> None:
    """A silent fallback to zstd would hide a broken build: the test environment must have the extension."""
    assert native.AVAILABLE, native.MISSING
    assert CodecSettings().entropy_stage is Stage.CTX


planes_strategy = hnp.arrays(
    np.uint8,
    st.tuples(st.sampled_from([1, 3]), st.integers(1, 40), st.integers(1, 40)),
    elements=st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 255, 128, 127, 2, 254])),
)


@given(planes_strategy)
@settings(max_examples=300, deadline=None)
def test_any_planes_round_trip_within_the_size_bound(planes: np.ndarray) -> None:
    payload = native.ctx_encode(planes)
    assert len(payload) <= planes.size + 2 * planes.shape[0]
    decoded = native.ctx_decode(payload, *planes.shape)
    assert np.array_equal(decoded, planes)


@given(planes_strategy, st.lists(st.one_of(st.none(), st.booleans()), min_size=3, max_size=3))
@settings(max_examples=200, deadline=None)
def test_undoing_med_in_the_decode_pass_is_unmed_after_it(
    planes: np.ndarray, flags: list[bool | None]
) -> None:
    """``ctx_decode(..., unmed=...)`` (the decoder's path for a record whose stages end MED or MED_CHROMA, CTX)
    gives what undoing MED after decoding gives, for coded and stored planes, signed or not, and leaves a plane
    that MED did not predict (None) as it is."""
    unmed = tuple(flags[: planes.shape[0]])
    residuals = planes.copy()
    for k, signed in enumerate(unmed):
        if signed is not None:
            residuals[k] = T.med(planes[k : k + 1], (signed,))[0]
    payload = native.ctx_encode(residuals)
    assert np.array_equal(native.ctx_decode(payload, *planes.shape, unmed=unmed), planes)


def test_undoing_med_in_the_decode_pass_reads_old_planes_too() -> None:
    """Run planes and planes without runs (versions 2-3) take MED off row by row after their coder."""
    for payload, shape in ((V3_RUNS_PAYLOAD, (1, 8, 8)),):
        values = native.ctx_decode(payload, *shape, group_planes=False)
        for signed in (False, True):
            fused = native.ctx_decode(payload, *shape, group_planes=False, unmed=(signed,))
            assert np.array_equal(fused, T.unmed(values, (signed,)))


def test_noise_is_stored_and_residuals_shrink() -> None:
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (3, 64, 80), dtype=np.uint8)
    payload = native.ctx_encode(noise)
    assert len(payload) == noise.size + 6
    assert payload[:2] == b"\x00\x00"  # stored: centre 0, no tables
    small = (rng.laplace(0, 1.5, (3, 64, 80)).round().astype(np.int16) % 256).astype(np.uint8)
    assert len(native.ctx_encode(small)) < small.size / 2.5


def test_golden_bytes() -> None:
    """Pins the layout of docs/wire-format.md (a group plane) on a 4×40 plane of 5s with three other values."""
    plane = np.full((1, 4, 40), 5, dtype=np.uint8)
    plane[0, 1, 3] = plane[0, 2, 20] = 6
    plane[0, 3, 39] = 4
    payload = native.ctx_encode(plane)
    assert payload[0] == 5  # centre: the commonest value
    assert payload[1] == 0x41  # a group plane (bit 6) with one context table: fewer than 4096 samples
    assert payload[2:18] == bytes(16)  # every context maps to table 0
    # The three flagged groups' 40 samples: symbols 0 ×37, 1 ×2, 255 ×1 → 15155, 819, 410 of 16384, as LEB128
    # varints with one zero and a run of 252 more between symbols 1 and 255.
    assert payload[18:26] == bytes.fromhex("b376 b306 00fc 9a03")
    # Three groups a row (16, 16 and 8 samples), 12 flags. Flag context 0 (nothing flagged left or above):
    # 5 zeros and 3 ones → 10240 for 0; contexts 1 and 2 saw only zeros and 3 (left and above) none: 16384.
    assert payload[26:37] == bytes.fromhex("8050 808001 808001 808001")
    (length,) = struct.unpack_from("<I", payload, 37)
    assert length == 17  # the four 32-bit states and one renormalisation byte for 52 events
    assert len(payload) == 41 + length
    assert payload.hex() == GOLDEN_HEX
    assert np.array_equal(native.ctx_decode(payload, 1, 4, 40), plane)
    with pytest.raises(WireFormatError, match="impossible number of tables"):
        native.ctx_decode(
            payload, 1, 4, 40, group_planes=False
        )  # before version 4 the byte 0x41 means K = 65


GOLDEN_HEX = (
    "0541" + "00" * 16 + "b376b30600fc9a03" + "8050808001808001808001" + "11000000"
    "245747201ea676047e61be01656b4537c6"
)


V3_RUNS_PAYLOAD = bytes.fromhex(
    "0501" + "00" * 16 + "8040d52a00fcab15" + "d10b0001d10b0000d10b00f88d5d" + "10000000"
    "d773981ce0bd613eac09662d15ebab05"
)
"""The version-3 encoder's CTX payload of an 8×8 plane of 5s with 6 at (2, 3) and (7, 0) and 4 at (5, 5)."""


def v3_plane() -> np.ndarray:
    plane = np.full((1, 8, 8), 5, dtype=np.uint8)
    plane[0, 2, 3] = plane[0, 7, 0] = 6
    plane[0, 5, 5] = 4
    return plane


def test_version_3_golden_bytes_still_decode() -> None:
    """Archives and spools hold records written before version 4: a run plane and a plane without runs, as the
    version-3 encoder wrote them (the 8×8 plane of 5s that pinned its layout, and a sparse 16×1000 plane)."""
    plane = v3_plane()
    runs = V3_RUNS_PAYLOAD
    sparse = np.zeros((1, 16, 1000), dtype=np.uint8)
    sparse[0, 1, 300], sparse[0, 3, 10], sparse[0, 15, 999] = 1, 255, 2
    no_runs = bytes.fromhex(
        "0081" + "00" * 16 + "fd7f010100fb01" + "13000000" + "9b38864231230a018cf6864243b08e42cc9100"
    )
    for group_planes in (False, True):
        assert np.array_equal(native.ctx_decode(runs, 1, 8, 8, group_planes=group_planes), plane)
        assert np.array_equal(native.ctx_decode(no_runs, 1, 16, 1000, group_planes=group_planes), sparse)


def test_group_planes_refuse_what_the_document_forbids() -> None:
    plane = np.full((1, 4, 40), 5, dtype=np.uint8)
    plane[0, 1, 3] = 6
    payload = bytearray(native.ctx_encode(plane))
    assert payload[1] == 0x41
    for tables, message in ((0xC1, "group plane without runs"), (0x40, "stored group plane")):
        bad = bytearray(payload)
        bad[1] = tables
        with pytest.raises(WireFormatError, match=message):  # bits 6 and 7: a banded plane from version 8
            native.ctx_decode(bytes(bad), 1, 4, 40, banded_planes=False)
    flags_at = 18 + 8  # after the one context table (4 varints and a zero run, 8 bytes here)
    bad = bytearray(payload)
    bad[flags_at : flags_at + 2] = bytes.fromhex("8181")  # 16385 > 16384
    bad[flags_at + 2] = 0x01
    with pytest.raises(WireFormatError, match="malformed flag table"):
        native.ctx_decode(bytes(bad), 1, 4, 40)


def _payload(rows: int = 24, cols: int = 40) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(8)
    planes = (rng.laplace(0, 2.0, (3, rows, cols)).round().astype(np.int16) % 256).astype(np.uint8)
    return native.ctx_encode(planes), planes


def test_every_truncation_is_refused() -> None:
    payload, planes = _payload()
    for cut in range(len(payload)):
        with pytest.raises(WireFormatError):
            native.ctx_decode(payload[:cut], *planes.shape)
    with pytest.raises(WireFormatError, match="after its last plane"):
        native.ctx_decode(payload + b"\x00", *planes.shape)


def test_mutated_payloads_decode_or_raise_one_error() -> None:
    """Random byte changes never crash the decoder nor make it read or write out of bounds."""
    payload, planes = _payload()
    rng = random.Random(3)
    refused = 0
    for _ in range(5000):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decoded = native.ctx_decode(bytes(data), *planes.shape)
        except WireFormatError:
            refused += 1
        else:
            assert decoded.shape == planes.shape
    assert refused > 4000, refused


def run_dense_plane(rows: int = 64, width: int = 256) -> np.ndarray:
    """Zeros with a random small value in every fourth column: a run (two zeros) every four samples, n / 4 in all,
    so the encoder's store of pass-1 runs (at most n / 8) fills half way and the rest are searched again."""
    rng = np.random.default_rng(5)
    plane = np.zeros((1, rows, width), np.uint8)
    values = [1, 2, 3, 4, 5, 251, 252, 253, 254, 255]
    plane[0, :, 3::4] = rng.choice(values, size=(rows, width // 4))
    return plane


def test_a_plane_with_more_runs_than_the_encoder_keeps_round_trips() -> None:
    plane = run_dense_plane()
    payload = native.ctx_encode(plane)
    assert payload[1] & 0x80 == 0, "the plane must be coded with runs"
    assert (native.ctx_decode(payload, 1, 64, 256) == plane).all()
    assert abs(native.ctx_cost(plane) - len(payload)) < 16


def test_bad_shapes_are_refused_before_allocating() -> None:
    with pytest.raises(WireFormatError, match="bad shape"):
        native.ctx_decode(b"", 3, 0, 10)
    with pytest.raises(WireFormatError, match="bad shape"):
        native.ctx_decode(b"", 9, 10, 10)


def test_records_carry_the_lowest_version_that_has_their_stages_and_hash(pets_cut: Path) -> None:
    # In grey: PETS's colour key lays its chroma out by 2×2 block (BLOCK_CHROMA), which needs version 6.
    frame = cv2.cvtColor(next(iter_images(pets_cut, 1)), cv2.COLOR_BGR2GRAY)
    for entropy, version in (("ctx", 4), ("zstd", 3)):
        record = FrameEncoder("cam", CodecSettings(entropy=entropy)).encode(frame, 0)  # type: ignore[arg-type]
        assert record.header.hash_kind is FrameHash.XXH3_128
        assert pack_record(record)[4] == version  # CTX as the encoder writes it (group planes) needs 4
    # The zstd record with a SHA-256 frame hash, as encoders before version 3 wrote it, is a version-1 record,
    # and still decodes and verifies.
    header = replace(
        record.header, frame_hash=frame_hash(frame, FrameHash.SHA256), hash_kind=FrameHash.SHA256
    )
    parsed = unpack_record(pack_record(Record(header, record.payload)))
    assert pack_record(parsed)[4] == 1
    assert parsed.header.hash_kind is FrameHash.SHA256
    assert cv2.norm(decode_record(parsed), frame, cv2.NORM_INF) == 0
    # A CTX payload as versions 2 and 3 wrote it (a run plane), with each one's frame hash: the version each
    # says, decoded as such.
    plane = v3_plane()[0]
    for hash_kind, version in ((FrameHash.SHA256, 2), (FrameHash.XXH3_128, 3)):
        old = RecordHeader(
            camera_id="cam", seq=0, key_seq=0, ref_seq=0, kind=Kind.KEY, capture_time_ns=0, width=8, height=8,
            pixel_format=PixelFormat.GRAY8, stages=(Stage.CTX,), frame_hash=frame_hash(plane, hash_kind),
            hash_kind=hash_kind, group_planes=False,
        )  # fmt: skip
        data = pack_record(Record(old, V3_RUNS_PAYLOAD))
        assert data[4] == version
        parsed = unpack_record(data)
        assert (parsed.header.hash_kind, parsed.header.group_planes) == (hash_kind, False)
        assert np.array_equal(decode_record(parsed), plane)
    with pytest.raises(WireFormatError, match="SHA-256 frame hash"):
        pack_record(Record(replace(old, hash_kind=FrameHash.SHA256, group_planes=True), V3_RUNS_PAYLOAD))
    assert record_version((Stage.RCT, Stage.MED, Stage.CTX)) == 2
    assert record_version((Stage.RCT, Stage.MED, Stage.CTX), FrameHash.XXH3_128) == 3
    assert record_version((Stage.RCT, Stage.MED, Stage.CTX), FrameHash.XXH3_128, group_planes=True) == 4
    assert record_version((Stage.RCT, Stage.MED, Stage.ZSTD), FrameHash.XXH3_128, group_planes=True) == 3
    assert record_version((), FrameHash.SHA256) == 1
    # A version-1 record cannot list CTX: rewrite the version byte (and the CRC) and it is refused.
    forged = bytearray(pack_record(FrameEncoder("cam").encode(frame, 0)))
    forged[4] = 1
    forged[-4:] = struct.pack("<I", zlib.crc32(forged[:-4]))
    with pytest.raises(WireFormatError, match="need wire format version 2"):
        unpack_record(bytes(forged))
    # A version-4 record read as version 3 takes its group planes for corrupted table counts.
    forged[4] = 3
    forged[-4:] = struct.pack("<I", zlib.crc32(forged[:-4]))
    with pytest.raises(WireFormatError, match="impossible number of tables"):
        decode_record(unpack_record(bytes(forged)))
    # Read as version 2, its XXH3 field is taken for a SHA-256 one as well.
    forged[4] = 2
    forged[-4:] = struct.pack("<I", zlib.crc32(forged[:-4]))
    assert unpack_record(bytes(forged)).header.hash_kind is FrameHash.SHA256


@pytest.mark.parametrize("entropy", ["ctx", "zstd"])
def test_both_entropy_stages_are_exact_on_the_committed_clip(pets_cut: Path, entropy: str) -> None:
    encoder = FrameEncoder("cam", CodecSettings(entropy=entropy))  # type: ignore[arg-type]
    decoder = FrameDecoder()
    stages = set()
    for i, frame in enumerate(iter_images(pets_cut, 30)):
        record = encoder.encode(frame, i)
        stages.add(record.header.stages[-1])
        image = decoder.decode(unpack_record(pack_record(record)))
        assert cv2.norm(image, frame, cv2.NORM_INF) == 0
        assert record.header.kind is (Kind.KEY if i == 0 else Kind.MEMBER)
    assert stages == {Stage.CTX if entropy == "ctx" else Stage.ZSTD}


def test_ctx_beats_zstd_on_the_committed_clip(pets_cut: Path) -> None:
    """The reason CTX is the default; the measured margin on all public sets is in docs/benchmarks.md."""
    sizes = {}
    for entropy in ("ctx", "zstd"):
        encoder = FrameEncoder("cam", CodecSettings(entropy=entropy))  # type: ignore[arg-type]
        sizes[entropy] = sum(
            len(encoder.encode(f, i).payload) for i, f in enumerate(iter_images(pets_cut, 20))
        )
    assert sizes["ctx"] < 0.9 * sizes["zstd"], sizes


def test_without_the_compiled_coder_the_codec_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, pets_cut: Path
) -> None:
    """An install without a C compiler: "auto" codes with zstd and numpy's MED, "ctx" and "jpeg_chroma" are
    refused with the reason, a CTX record names what is missing instead of failing obscurely, and a
    JPEG_CHROMA record coded with zstd still decodes (numpy's inverse)."""
    frames = list(iter_images(pets_cut, 3))
    ctx_records = [pack_record(r) for r in _encode_all(frames, CodecSettings())]
    ok, data = cv2.imencode(".jpg", frames[0])
    assert ok
    still = cv2.imdecode(data, cv2.IMREAD_COLOR)
    jpeg_record = FrameEncoder("cam", CodecSettings(entropy="zstd", jpeg_chroma=True)).encode(still, 0)
    assert jpeg_record.header.stages == (Stage.JPEG_CHROMA, Stage.MED, Stage.ZSTD)
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "AVAILABLE", False)
    assert CodecSettings().entropy_stage is Stage.ZSTD
    with pytest.raises(ValueError, match="gcc python3-dev"):
        CodecSettings(entropy="ctx")
    with pytest.raises(ValueError, match="gcc python3-dev"):
        CodecSettings(jpeg_chroma=True)
    assert np.array_equal(FrameDecoder().decode(unpack_record(pack_record(jpeg_record))), still)
    decoder = FrameDecoder()
    for frame, record in zip(frames, _encode_all(frames, CodecSettings()), strict=True):
        assert record.header.stages[-1] is Stage.ZSTD
        assert cv2.norm(decoder.decode(unpack_record(pack_record(record))), frame, cv2.NORM_INF) == 0
    with pytest.raises(WireFormatError, match="compiled module"):
        FrameDecoder().decode(unpack_record(ctx_records[0]))


@pytest.mark.parametrize("tolerance", [0, 2])
def test_the_compiled_pixel_pass_and_numpy_code_the_same_records(
    monkeypatch: pytest.MonkeyPatch, pets_cut: Path, tolerance: int
) -> None:
    """The compiled pass and numpy's bands must code every record the same but for its SSIM (the compiled SSIM
    copy is the exact block mean, OpenCV's rounds at each halving)."""
    frames = list(iter_images(pets_cut, 6))
    frames.append(cv2.cvtColor(frames[-1], cv2.COLOR_BGR2GRAY))  # a format change: a grey key
    frames.append(cv2.cvtColor(frames[-3], cv2.COLOR_BGR2GRAY))
    codec = CodecSettings(entropy="zstd", tolerance=tolerance)

    def coded() -> list[tuple[RecordHeader, bytes]]:
        return [(replace(r.header, ssim=0.0), r.payload) for r in _encode_all(frames, codec)]

    compiled = coded()
    assert any(h.kind is Kind.MEMBER and h.pixel_format is PixelFormat.GRAY8 for h, _ in compiled)
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "AVAILABLE", False)
    assert coded() == compiled


def _encode_all(frames: list[np.ndarray], codec: CodecSettings) -> list[Record]:
    encoder = FrameEncoder("cam", codec)
    return [encoder.encode(frame, i) for i, frame in enumerate(frames)]


def test_cost_is_the_coded_size_without_coding(pets_cut: Path) -> None:
    """The encoder's estimates count instead of coding: within a few bytes a plane of what encode writes."""
    frames = [T.to_planes(frame) for frame in iter_images(pets_cut, 3)]
    noise = np.random.default_rng(2).integers(0, 256, (3, 40, 50), dtype=np.uint8)
    for planes in (frames[0], T.rct(T.residual(frames[2], frames[1])), noise):
        coded = len(native.ctx_encode(planes))
        assert abs(native.ctx_cost(planes) - coded) <= 8 * planes.shape[0], (native.ctx_cost(planes), coded)
    with pytest.raises(ValueError, match="buffer holds 3 bytes, shape needs 4"):
        native._module().cost(b"abc", 1, 2, 2)


def _large_planes(channels: int, seed: int) -> np.ndarray:
    """Planes big enough (2^17 samples and more) for the extension to code and decode them at once: residual-like,
    mostly zeros with small values, one plane pure noise (stored) and, with four, one of all zeros."""
    rng = np.random.default_rng(seed)
    planes = np.zeros((channels, 384, 400), np.uint8)
    for k in range(channels):
        mask = rng.random(planes.shape[1:]) < 0.1 * (k + 1)
        planes[k][mask] = rng.integers(-6, 7, int(mask.sum())).astype(np.uint8)
    planes[1] = rng.integers(0, 256, planes.shape[1:], dtype=np.uint8)
    if channels == 4:
        planes[3] = 0
    return planes


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_planes_coded_and_decoded_at_once_are_the_same_bytes(channels: int) -> None:
    """The extension codes, costs and decodes a record's large planes on up to ``threads`` threads: the bytes,
    the estimate and the decoded planes (with MED undone in the pass too) never depend on how many."""
    planes = _large_planes(channels, seed=channels)
    assert planes.shape[1] * planes.shape[2] >= 2**17
    alone = native.ctx_encode(planes, threads=1)
    cost = native.ctx_cost(planes, threads=1)
    flags = (True, None, False, True)[:channels]
    for threads in (2, 3, 4, 8):
        assert native.ctx_encode(planes, threads=threads) == alone
        assert native.ctx_cost(planes, threads=threads) == cost
        assert np.array_equal(native.ctx_decode(alone, *planes.shape, threads=threads), planes)
        assert np.array_equal(
            native.ctx_decode(alone, *planes.shape, unmed=flags, threads=threads),
            native.ctx_decode(alone, *planes.shape, unmed=flags, threads=1),
        )


def _damage_outcomes(payload: bytes, shape: tuple[int, ...], rng: random.Random, head: int = 0) -> set[str]:
    """Decodes 303 damaged copies of payload (cut short, one byte long, halved, and 300 with 1-3 bytes changed,
    half of them within its first ``head`` bytes when head is given) on one thread and on three: each must
    decode to the same planes or fail with the same message. Returns the messages met ("decoded" for none)."""
    damaged = [payload[:-1], payload + b"\x00", payload[: len(payload) // 2]]
    for _ in range(300):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(head) if head and rng.random() < 0.5 else rng.randrange(len(data))
            data[where] = rng.randrange(256)
        damaged.append(bytes(data))
    outcomes = set()
    for data in damaged:
        results = []
        for threads in (1, 3):
            try:
                results.append(native.ctx_decode(data, *shape, threads=threads).tobytes())
            except WireFormatError as e:
                results.append(str(e))
        assert results[0] == results[1]
        outcomes.add(results[0] if isinstance(results[0], str) else "decoded")
    return outcomes


def test_damage_decoded_at_once_says_what_decoding_plane_by_plane_says() -> None:
    """Where the planes cannot all be found the decoder goes plane by plane; where they can, the first failing
    plane's error is the one reported, as in order. Either way the message is the same with any thread count."""
    planes = _large_planes(3, seed=9)
    outcomes = _damage_outcomes(native.ctx_encode(planes, threads=1), planes.shape, random.Random(11))
    assert len(outcomes) >= 4, outcomes  # several kinds of damage met, not one message


# --- banded planes (wire format version 8)


def test_planes_of_2_19_samples_and_more_are_banded() -> None:
    """The rule docs/wire-format.md states: min(4, n // 2^18) bands from n = 2^19 samples; the same on every
    machine, since the bands decide the bytes."""
    cases = {(240, 320): 1, (1023, 512): 1, (512, 1024): 2, (864, 768): 2, (720, 1280): 3, (1080, 1920): 4}
    assert {shape: native.ctx_bands(*shape) for shape in cases} == cases
    assert native.ctx_bands(1620, 1920) == 4  # a 1080p picture's one plane (Y over its two chroma planes)


def _banded_plane(seed: int, height: int = 768, width: int = 1024) -> np.ndarray:
    """A residual-like plane large enough to be banded (3 bands here): zeros with small values, denser below."""
    rng = np.random.default_rng(seed)
    plane = np.zeros((1, height, width), np.uint8)
    mask = rng.random((height, width)) < np.linspace(0.02, 0.4, height)[:, None]
    plane[0][mask] = rng.integers(-6, 7, int(mask.sum())).astype(np.uint8)
    return plane


def test_a_large_plane_is_coded_in_bands_the_same_with_any_threads() -> None:
    """Its bands are coded, costed and (without MED) decoded at once: the bytes, the estimate and the planes
    never depend on how many threads; with MED undone in the pass the bands are decoded in turn."""
    plane = _banded_plane(1)
    alone = native.ctx_encode(plane, threads=1)
    assert alone[1] & 0xC0 == 0xC0, "a banded group plane"
    cost = native.ctx_cost(plane, threads=1)
    assert abs(cost - len(alone)) <= 8
    signed = native.ctx_decode(alone, *plane.shape, unmed=(True,), threads=1)
    assert np.array_equal(signed, native.unmed(plane, (True,)))
    for threads in (2, 3, 4, 8):
        assert native.ctx_encode(plane, threads=threads) == alone
        assert native.ctx_cost(plane, threads=threads) == cost
        assert np.array_equal(native.ctx_decode(alone, *plane.shape, threads=threads), plane)
        assert np.array_equal(native.ctx_decode(alone, *plane.shape, unmed=(True,), threads=threads), signed)
    # Three such planes: coded at once as planes, each plane's bands in turn.
    planes = np.concatenate([_banded_plane(2), _banded_plane(3), _banded_plane(4)])
    three = native.ctx_encode(planes, threads=1)
    assert three == b"".join(native.ctx_encode(p[None], threads=1) for p in planes)
    for threads in (1, 3):
        assert native.ctx_encode(planes, threads=threads) == three
        assert np.array_equal(native.ctx_decode(three, *planes.shape, threads=threads), planes)


def test_a_banded_plane_that_would_not_shrink_is_stored() -> None:
    noise = np.random.default_rng(5).integers(0, 256, (1, 768, 1024), dtype=np.uint8)
    assert native.ctx_encode(noise) == b"\x00\x00" + noise.tobytes()
    # One band of noise under calm ones: that band grows, but the plane shrinks, so it is coded after all, to
    # what the estimate said.
    mixed = _banded_plane(6)
    mixed[0, 512:] = noise[0, 512:]  # the last of its three bands
    coded = native.ctx_encode(mixed)
    assert coded[1] & 0xC0 == 0xC0
    assert len(coded) < mixed.size // 2
    assert abs(native.ctx_cost(mixed) - len(coded)) <= 8
    assert np.array_equal(native.ctx_decode(coded, *mixed.shape), mixed)
    assert _band_lengths(coded)[-1] > 256 * 1024  # the noise band: more bytes than its 262,144 samples


def test_bands_are_refused_before_version_8() -> None:
    """Bits 6 and 7 both set are a banded plane from version 8 on; before, a corrupted group plane."""
    plane = _banded_plane(7)
    payload = native.ctx_encode(plane)
    with pytest.raises(WireFormatError, match="group plane without runs"):
        native.ctx_decode(payload, *plane.shape, banded_planes=False)
    for count, message in ((0, "impossible number of bands"), (255, "impossible number of bands")):
        bad = bytearray(payload)
        bad[_band_count_at(payload)] = count
        with pytest.raises(WireFormatError, match=message):
            native.ctx_decode(bytes(bad), 1, 200, 1024)  # B = 255 > H = 200 too


def _band_count_at(payload: bytes) -> int:
    """Where a one-plane banded payload's B is: walk back from the end over its bands' lengths and bytes."""
    for at in range(18, len(payload)):
        count, pos = payload[at], at + 1
        for _ in range(count):
            pos += 4 + int.from_bytes(payload[pos : pos + 4], "little")
        if count and pos == len(payload):
            return at
    raise AssertionError("no band count found")


def _band_lengths(payload: bytes) -> list[int]:
    at = _band_count_at(payload)
    lengths, pos = [], at + 1
    for _ in range(payload[at]):
        lengths.append(int.from_bytes(payload[pos : pos + 4], "little"))
        pos += 4 + lengths[-1]
    return lengths


def test_damage_in_bands_decoded_at_once_says_what_decoding_them_in_turn_says() -> None:
    """Every band's length is read before any band is decoded, then the first failing band's error is the one
    reported: the same message with one thread or several, and the same decoded plane where it decodes."""
    plane = _banded_plane(8)
    payload = native.ctx_encode(plane, threads=1)
    at = _band_count_at(payload)
    assert payload[at] == 3
    # half the damage in the header, the band count or the lengths, where the layout is decided
    outcomes = _damage_outcomes(payload, plane.shape, random.Random(12), head=at + 14)
    assert len(outcomes) >= 5, outcomes


def test_records_with_a_plane_large_enough_to_band_are_version_8(pets_cut: Path) -> None:
    """Only they: a PETS frame's 442,368-sample planes keep the version they had; the same frame at 1024x768
    (786,432 samples a plane, three bands) is version 8, decodes exactly, and read as version 7 its banded
    planes are refused as the corrupted group planes they would be there."""
    frame = cv2.cvtColor(next(iter_images(pets_cut, 1)), cv2.COLOR_BGR2GRAY)
    small = pack_record(FrameEncoder("cam").encode(frame, 0))
    assert small[4] == 4
    assert not unpack_record(small).header.banded_planes
    large = cv2.resize(frame, (1024, 768), interpolation=cv2.INTER_CUBIC)
    data = pack_record(FrameEncoder("cam").encode(large, 0))
    assert data[4] == 8
    parsed = unpack_record(data)
    assert parsed.header.banded_planes
    assert cv2.norm(decode_record(parsed), large, cv2.NORM_INF) == 0
    zstd = FrameEncoder("cam", CodecSettings(entropy="zstd")).encode(large, 0)
    assert not zstd.header.banded_planes
    assert pack_record(zstd)[4] == 3
    forged = bytearray(data)
    forged[4] = 7
    forged[-4:] = struct.pack("<I", zlib.crc32(forged[:-4]))
    with pytest.raises(WireFormatError, match="group plane without runs"):
        decode_record(unpack_record(bytes(forged)))
    assert record_version((Stage.MED, Stage.CTX), FrameHash.XXH3_128, True, banded_planes=True) == 8
    assert record_version((Stage.MED, Stage.ZSTD), FrameHash.XXH3_128, banded_planes=True) == 3
