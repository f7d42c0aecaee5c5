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
from agent.codec.wire import FrameHash, Kind, Record, Stage, pack_record, record_version, unpack_record
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


def test_noise_is_stored_and_residuals_shrink() -> None:
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (3, 64, 80), dtype=np.uint8)
    payload = native.ctx_encode(noise)
    assert len(payload) == noise.size + 6
    assert payload[:2] == b"\x00\x00"  # stored: centre 0, no tables
    small = (rng.laplace(0, 1.5, (3, 64, 80)).round().astype(np.int16) % 256).astype(np.uint8)
    assert len(native.ctx_encode(small)) < small.size / 2.5


def test_golden_bytes() -> None:
    """Pins the layout of docs/wire-format.md on an 8×8 plane of 5s with three other values."""
    plane = np.full((1, 8, 8), 5, dtype=np.uint8)
    plane[0, 2, 3] = plane[0, 7, 0] = 6
    plane[0, 5, 5] = 4
    payload = native.ctx_encode(plane)
    assert payload[0] == 5  # centre: the commonest value
    assert payload[1] == 1  # one context table: the plane has fewer than 4096 samples
    assert payload[2:18] == bytes(16)  # every context maps to table 0
    # Six sample events (symbols 0 ×3, 1 ×2, 255 ×1 → 8192, 5461, 2731 of 16384), as LEB128 varints with
    # one zero and a run of 252 more between symbols 1 and 255.
    assert payload[18:26] == bytes.fromhex("8040 d52a 00fc ab15")
    # Eleven run events: r = 0, 3 and 5 once each (1489 each), and 255 ("to the row end") eight times (11917).
    assert payload[26:40] == bytes.fromhex("d10b 0001 d10b 0000 d10b 00f8 8d5d")
    (length,) = struct.unpack_from("<I", payload, 40)
    assert length == 16  # the four 32-bit states, and no renormalisation byte for so few events
    assert len(payload) == 44 + length
    assert payload.hex() == GOLDEN_HEX
    assert np.array_equal(native.ctx_decode(payload, 1, 8, 8), plane)


def test_golden_bytes_without_runs() -> None:
    """A sparse plane costs less without a run table: the table count says so with its high bit (0x80)."""
    plane = np.zeros((1, 16, 1000), dtype=np.uint8)
    plane[0, 1, 300], plane[0, 3, 10], plane[0, 15, 999] = 1, 255, 2
    payload = native.ctx_encode(plane)
    assert payload[:2] == b"\x00\x81"  # centre 0; one context table, no run table
    # Symbol 0 (15997 samples) 16381, symbols 1, 2 and 255: 1 each (the least a symbol that occurs gets);
    # between 2 and 255 one zero and a run of 251 more.
    assert payload[18:25] == bytes.fromhex("fd7f 01 01 00fb 01")
    assert payload.hex() == (
        "0081" + "00" * 16 + "fd7f010100fb01" + "13000000" + "9b38864231230a018cf6864243b08e42cc9100"
    )
    assert np.array_equal(native.ctx_decode(payload, 1, 16, 1000), plane)


GOLDEN_HEX = (
    "0501" + "00" * 16 + "8040d52a00fcab15" + "d10b0001d10b0000d10b00f88d5d" + "10000000"
    "d773981ce0bd613eac09662d15ebab05"
)


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


def test_ways_tell_which_planes_skip_the_run_search(pets_cut: Path) -> None:
    """cost reports each plane's way; encode given them writes what it writes without them where they agree
    with its own choice, and a plane forced without runs still decodes exactly (a wrong way costs bytes only)."""
    frames = [T.to_planes(frame) for frame in iter_images(pets_cut, 2)]
    # Small noise: zeros often, in short runs that cost more than they save (noisy luma residuals are like it).
    noise = (np.random.default_rng(3).laplace(0, 0.5, (1, 64, 256)).round().astype(int) % 256).astype(
        np.uint8
    )
    mixed = np.concatenate([run_dense_plane(), noise])  # (2, 64, 256): runs pay, then they do not
    _cost, ways = native.ctx_estimate(mixed)
    assert ways == b"\x01\x00"
    plain = native.ctx_encode(mixed)
    assert native.ctx_encode(mixed, ways) == plain
    forced = native.ctx_encode(mixed, b"\x00\x00")
    assert forced != plain
    assert forced[1] & 0x80, "the first plane must be coded without runs when told so"
    assert (native.ctx_decode(forced, 2, 64, 256) == mixed).all()
    residual = T.rct(T.residual(frames[1], frames[0]))
    _cost, ways = native.ctx_estimate(residual)
    assert native.ctx_encode(residual, ways) == native.ctx_encode(residual)
    with pytest.raises(ValueError, match="3 ways for 2 planes"):
        native.ctx_encode(mixed, b"\x01\x01\x01")


def test_bad_shapes_are_refused_before_allocating() -> None:
    with pytest.raises(WireFormatError, match="bad shape"):
        native.ctx_decode(b"", 3, 0, 10)
    with pytest.raises(WireFormatError, match="bad shape"):
        native.ctx_decode(b"", 9, 10, 10)


def test_records_carry_the_lowest_version_that_has_their_stages_and_hash(pets_cut: Path) -> None:
    frame = next(iter_images(pets_cut, 1))
    for entropy, stage, sha_version in (("ctx", Stage.CTX, 2), ("zstd", Stage.ZSTD, 1)):
        record = FrameEncoder("cam", CodecSettings(entropy=entropy)).encode(frame, 0)  # type: ignore[arg-type]
        assert record.header.hash_kind is FrameHash.XXH3_128
        assert pack_record(record)[4] == 3
        # The same record with a SHA-256 frame hash, as encoders before version 3 wrote it, carries the lowest
        # version that has its stages, and still decodes and verifies.
        header = replace(
            record.header, frame_hash=frame_hash(frame, FrameHash.SHA256), hash_kind=FrameHash.SHA256
        )
        data = pack_record(Record(header, record.payload))
        assert data[4] == sha_version
        parsed = unpack_record(data)
        assert parsed.header.hash_kind is FrameHash.SHA256
        assert parsed.header.stages[-1] is stage
        assert cv2.norm(decode_record(parsed), frame, cv2.NORM_INF) == 0
    assert record_version((Stage.RCT, Stage.MED, Stage.CTX)) == 2
    assert record_version((Stage.RCT, Stage.MED, Stage.CTX), FrameHash.XXH3_128) == 3
    assert record_version((), FrameHash.SHA256) == 1
    # A version-1 record cannot list CTX: rewrite the version byte (and the CRC) and it is refused.
    forged = bytearray(pack_record(FrameEncoder("cam").encode(frame, 0)))
    forged[4] = 1
    forged[-4:] = struct.pack("<I", zlib.crc32(forged[:-4]))
    with pytest.raises(WireFormatError, match="need wire format version 2"):
        unpack_record(bytes(forged))
    # A version-3 record read as version 2 takes its XXH3 field for a SHA-256 one: the frame fails its hash.
    forged[4] = 2
    forged[-4:] = struct.pack("<I", zlib.crc32(forged[:-4]))
    with pytest.raises(WireFormatError, match="does not match its hash"):
        decode_record(unpack_record(bytes(forged)))


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
    """An install without a C compiler: "auto" codes with zstd and numpy's MED, "ctx" is refused with the
    reason, and a CTX record names what is missing instead of failing obscurely."""
    frames = list(iter_images(pets_cut, 3))
    ctx_records = [pack_record(r) for r in _encode_all(frames, CodecSettings())]
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "AVAILABLE", False)
    assert CodecSettings().entropy_stage is Stage.ZSTD
    with pytest.raises(ValueError, match="gcc python3-dev"):
        CodecSettings(entropy="ctx")
    decoder = FrameDecoder()
    for frame, record in zip(frames, _encode_all(frames, CodecSettings()), strict=True):
        assert record.header.stages[-1] is Stage.ZSTD
        assert cv2.norm(decoder.decode(unpack_record(pack_record(record))), frame, cv2.NORM_INF) == 0
    with pytest.raises(WireFormatError, match="compiled module"):
        FrameDecoder().decode(unpack_record(ctx_records[0]))


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
