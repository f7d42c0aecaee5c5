"""Stage YUV420 (wire format v7): video decoded by the ffmpeg child is coded as its yuv420p pictures.

Bit for bit on the committed clip and the public videos, smaller than coding the frames, the normative
conversion as ``docs/wire-format.md`` words it, golden bytes, the rules a record must keep, hostile records,
and what the encoder does when a frame comes without its picture or with one that is not its own."""

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

from agent.capture import ffmpeg
from agent.capture.files import VideoFileSource
from agent.codec import native, transforms, yuv
from agent.codec.decoder import FrameDecoder, decode_record, reconstruct
from agent.codec.encoder import FrameEncoder, frame_hash
from agent.codec.pipeline import encode_planes
from agent.codec.settings import CodecSettings
from agent.codec.wire import (
    FIXED_SIZE,
    LUMA_GAIN,
    FrameHash,
    Kind,
    PixelFormat,
    Record,
    RecordHeader,
    Stage,
    hash_pixels,
    luma_step,
    pack_record,
    unpack_record,
)
from agent.errors import WireFormatError
from tests.fixtures.data import shared_set
from tests.unit.test_wire import _header as wire_header

needs_ffmpeg = pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")

Frames = list[tuple[np.ndarray, bytes]]


def _video(path: Path, limit: int) -> Frames:
    """The first frames of a video as the ffmpeg child decodes them, each with its picture."""
    frames: Frames = []
    with VideoFileSource(path, decoder="ffmpeg") as source:
        while len(frames) < limit and (frame := source.read()) is not None:
            assert frame.picture is not None
            frames.append((frame.image, frame.picture))
    return frames


def _within(frames: Frames, codec: CodecSettings, *, pictures: bool = True) -> tuple[list[Record], int, int]:
    """Encode, serialise, parse and decode every frame; (records, wire bytes, largest error in any sample)."""
    encoder, decoder = FrameEncoder("cam", codec), FrameDecoder()
    records, wire, worst = [], 0, 0
    for i, (image, picture) in enumerate(frames):
        record = encoder.encode(image, 1_000_000_000 * i, picture=picture if pictures else None)
        data = pack_record(record)
        worst = max(worst, int(cv2.norm(decoder.decode(unpack_record(data)), image, cv2.NORM_INF)))
        records.append(record)
        wire += len(data)
    return records, wire, worst


def _code(frames: Frames, codec: CodecSettings, *, pictures: bool = True) -> tuple[list[Record], int]:
    """:func:`_within`, every frame bit-exact; (records, wire bytes)."""
    records, wire, worst = _within(frames, codec, pictures=pictures)
    assert worst == 0, "not bit-exact"
    return records, wire


@needs_ffmpeg
def test_the_committed_clip_codes_its_pictures_bit_exact_and_smaller(pets_cut: Path) -> None:
    """Measured on these 120 frames: 1.35× smaller than coding the frames (docs/benchmarks.md)."""
    frames = _video(pets_cut, 120)
    records, with_pictures = _code(frames, CodecSettings())
    assert all(Stage.YUV420 in r.header.stages for r in records)
    assert all(r.header.pixel_format is PixelFormat.BGR8 and r.header.tolerance == 0 for r in records)
    plain, without = _code(frames, CodecSettings(), pictures=False)
    assert not any(Stage.YUV420 in r.header.stages for r in plain)
    raw = sum(image.nbytes for image, _ in frames)
    print(f"\npictures {raw / with_pictures:.2f}x, frames {raw / without:.2f}x")
    assert with_pictures * 1.25 <= without


@needs_ffmpeg
@pytest.mark.parametrize("name", ["pets", "intel", "motorway"])
def test_the_public_videos_code_their_pictures_bit_exact_and_smaller(name: str) -> None:
    """150 frames, as ``docs/benchmarks.md`` measures them: PETS 1.37×, Intel 1.38×, the motorway clip 1.26×
    smaller than coding the frames."""
    frames = _video(shared_set(name), 150)
    records, with_pictures = _code(frames, CodecSettings())
    assert all(Stage.YUV420 in r.header.stages for r in records)
    _plain, without = _code(frames, CodecSettings(), pictures=False)
    raw = sum(image.nbytes for image, _ in frames)
    print(f"\n{name}: pictures {raw / with_pictures:.2f}x, frames {raw / without:.2f}x")
    assert with_pictures * 1.2 <= without


@needs_ffmpeg
def test_every_reference_mode_is_exact(pets_cut: Path) -> None:
    frames = _video(pets_cut, 24)
    for reference in ("key", "previous", "auto"):
        records, _ = _code(frames, CodecSettings(reference=reference, max_key_interval_frames=10))  # type: ignore[arg-type]
        assert sum(r.header.kind is Kind.KEY for r in records) >= 3
        assert all(Stage.YUV420 in r.header.stages for r in records)


@needs_ffmpeg
def test_zstd_codes_pictures_too(pets_cut: Path) -> None:
    records, _ = _code(_video(pets_cut, 6), CodecSettings(entropy="zstd"))
    assert all(Stage.YUV420 in r.header.stages and Stage.ZSTD in r.header.stages for r in records)


@needs_ffmpeg
def test_at_t2_the_pictures_y_rows_are_quantised_within_2_and_pay(pets_cut: Path) -> None:
    """Measured on these 120 frames: 1.38× smaller than coding the frames at T=2, and 1.63× smaller than the
    pictures coded exactly."""
    frames = _video(pets_cut, 120)
    records, quantised, worst = _within(frames, CodecSettings(tolerance=2))
    assert worst == 2
    assert all(Stage.YUV420 in r.header.stages and r.header.tolerance == 2 for r in records)
    assert sum(Stage.RESIDUAL_QY in r.header.stages for r in records) > 100
    assert Stage.QUANTIZE_Y in records[0].header.stages
    _records, frames_t2, frames_worst = _within(frames, CodecSettings(tolerance=2), pictures=False)
    _records, exact, _worst = _within(frames, CodecSettings())
    raw = sum(image.nbytes for image, _ in frames)
    print(
        f"\nT=2: pictures {raw / quantised:.2f}x, frames {raw / frames_t2:.2f}x; exact pictures {raw / exact:.2f}x"
    )
    assert frames_worst == 2
    assert quantised * 1.3 <= frames_t2
    assert quantised * 1.5 <= exact


@given(
    st.integers(6, 16).map(lambda n: 2 * n),
    st.integers(6, 12).map(lambda n: 2 * n),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 2, 3, 5, 17, 32]),
)
@settings(max_examples=30, deadline=None)
def test_the_tolerance_holds_over_long_chains_of_pictures(
    width: int, height: int, seed: int, tolerance: int
) -> None:
    """A noisy picture sequence, 30 members chained on what the decoder rebuilds: within T in every sample."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, yuv.picture_bytes(width, height))
    frames = []
    for _ in range(31):
        noisy = np.clip(base + rng.integers(-6, 7, base.size), 0, 255).astype(np.uint8).tobytes()
        frames.append((yuv.to_bgr(noisy, width, height), noisy))
    codec = CodecSettings(tolerance=tolerance, threshold=0.0, ssim_downscale=1, max_key_interval_frames=1000)
    records, _wire, worst = _within(frames, codec)
    assert worst <= tolerance
    assert sum(r.header.kind is Kind.KEY for r in records) == 1
    assert all(Stage.YUV420 in r.header.stages for r in records)


def _lattice_holds(step: int, tolerance: int) -> bool:
    """Whether, for every Y and every offset of the lattice, one of the two points around Y has a luma term
    within ``tolerance`` of Y's (the luma term extended beyond 0..255 as the formula goes; clamping a point to
    0..255 only moves it towards Y)."""
    terms = ((np.arange(-300, 600) - 16) * LUMA_GAIN) >> 16
    luma = np.arange(256) + 300
    for below in range(step):
        low = np.abs(terms[luma - below] - terms[luma])
        high = np.abs(terms[luma - below + step] - terms[luma])
        if (np.minimum(low, high) > tolerance).any():
            return False
    return True


@pytest.mark.parametrize("tolerance", range(1, 33))
def test_the_luma_lattice_keeps_every_bgr_sample_within_the_tolerance(tolerance: int) -> None:
    """Every Y against every reference Y (and every Y coded on its own): the compiled quantiser and numpy's give
    the same codes, the decoder's formula rebuilds their reconstruction, its luma term (what B, G and R move
    by) is within T, and the codes fit the stage's bytes. The step is the largest for which that can hold."""
    step = luma_step(tolerance)
    assert _lattice_holds(step, tolerance)
    assert not _lattice_holds(step + 1, tolerance)
    luma = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(1, 256, 256)
    reference = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(1, 256, 256)
    for ref in (None, reference):
        codes, recon = transforms.quantize_luma(luma, ref, step, tolerance)
        if native.AVAILABLE:
            compiled = native.luma(luma, ref, step, tolerance)
            assert np.array_equal(compiled[0], codes)
            assert np.array_equal(compiled[1], recon)
        terms = transforms.LUMA_TERMS
        assert np.abs(terms[recon] - terms[luma]).max() <= tolerance
        if ref is None:
            rebuilt = transforms.dequantize(codes, tolerance, step=step)
        else:
            rebuilt = transforms.dequantize_residual(codes, ref, tolerance, step=step)
        assert np.array_equal(rebuilt, recon)
    assert (luma_step(0), luma_step(1), luma_step(2), luma_step(3), luma_step(32), luma_step(33)) == (
        0,
        2,
        4,
        6,
        55,
        0,
    )


@pytest.mark.parametrize("tolerance", [1, 2, 3, 6])
def test_a_residual_halfway_between_two_lattice_points_takes_the_smaller_code(tolerance: int) -> None:
    """Every Y against every reference: where both points around a sample are equally near and within T, the
    residual's code is the one nearer 0 (noise of ±S/2 codes as 0 on either side); elsewhere the nearer point
    within T. Without a reference the lower point of a tie."""
    step = luma_step(tolerance)
    luma = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(1, 256, 256)
    reference = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(1, 256, 256)
    terms = transforms.LUMA_TERMS
    y = luma.astype(np.int64)
    for ref in (reference, None):
        codes, recon = transforms.quantize_luma(luma, ref, step, tolerance)
        if native.AVAILABLE:
            assert np.array_equal(native.luma(luma, ref, step, tolerance)[0], codes)
        r = np.zeros_like(y) if ref is None else ref.astype(np.int64)
        low = np.clip(r + np.floor_divide(y - r, step) * step, 0, 255)
        high = np.clip(low + step, 0, 255)
        within_low = np.abs(terms[low] - terms[y]) <= tolerance
        within_high = np.abs(terms[high] - terms[y]) <= tolerance
        free = (y - r) // step + 1 <= 127  # else int8 forces the lower point (step 2, a difference of 255)
        tie = within_low & within_high & (y - low == high - y) & (low != high) & free
        assert tie.any()
        signed = codes.view(np.int8).astype(np.int64) if ref is not None else codes.astype(np.int64)
        if ref is None:
            assert np.array_equal(recon[tie], low[tie])
        else:
            other = 2 * ((y - r) // step) + 1 - signed  # the code of the point not taken
            assert (np.abs(signed[tie]) <= np.abs(other[tie])).all()
            assert (np.abs(signed[tie]) < np.abs(other[tie])).any()
        clear = within_low & within_high & (y - low != high - y) & free
        nearer = np.where(y - low < high - y, low, high)
        assert np.array_equal(recon[clear], nearer[clear])


@needs_ffmpeg
def test_at_t1_y_moves_by_steps_of_2_and_pays(pets_cut: Path) -> None:
    """One Y level can move B, G and R by 2, so no quantiser symmetric about Y keeps T = 1; the lattice of
    steps of 2 does, the encoder picking for each sample the point whose luma term is within 1. Measured on
    these 120 frames: 1.22x smaller than the exact pictures (the frames at T = 1, G quantised: about as small as
    the exact pictures)."""
    frames = _video(pets_cut, 120)
    records, quantised, worst = _within(frames, CodecSettings(tolerance=1))
    assert worst == 1
    assert all(Stage.YUV420 in r.header.stages for r in records)
    assert sum(Stage.RESIDUAL_QY in r.header.stages for r in records) > 100
    _records, exact, _worst = _within(frames, CodecSettings())
    raw = sum(image.nbytes for image, _ in frames)
    print(f"\nT=1: pictures {raw / quantised:.2f}x; exact pictures {raw / exact:.2f}x")
    assert quantised * 1.15 <= exact


@needs_ffmpeg
def test_with_the_setting_off_the_frames_are_coded(pets_cut: Path) -> None:
    frames = _video(pets_cut, 6)
    for codec in (CodecSettings(yuv=False), CodecSettings(yuv=False, tolerance=2)):
        encoder = FrameEncoder("cam", codec)
        records = [encoder.encode(image, i, picture=picture) for i, (image, picture) in enumerate(frames)]
        assert not any(Stage.YUV420 in r.header.stages for r in records), codec


def _random_pictures(seed: int, width: int, height: int, count: int) -> Frames:
    """A first random picture, then pictures with a fifth of their samples changed: each with its frame."""
    rng = np.random.default_rng(seed)
    size = yuv.picture_bytes(width, height)
    first = rng.integers(0, 256, size, dtype=np.uint8)
    pictures = [first] + [
        np.where(rng.random(size) < 0.2, rng.integers(0, 256, size, dtype=np.uint8), first)
        for _ in range(count)
    ]
    return [(yuv.to_bgr(p.tobytes(), width, height), p.tobytes()) for p in pictures]


@given(
    st.integers(6, 20).map(lambda n: 2 * n),
    st.integers(6, 16).map(lambda n: 2 * n),
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.sampled_from(["key", "previous", "auto"]),
)
@settings(max_examples=40, deadline=None)
def test_random_pictures_round_trip(width: int, height: int, seed: int, count: int, reference: str) -> None:
    codec = CodecSettings(reference=reference, threshold=0.0, ssim_downscale=1)  # type: ignore[arg-type]
    records, _ = _code(_random_pictures(seed, width, height, count), codec)
    assert all(Stage.YUV420 in r.header.stages for r in records)


def test_a_frame_without_its_picture_starts_a_key_and_the_next_key_codes_pictures_again() -> None:
    frames = _random_pictures(5, 32, 24, 5)
    encoder = FrameEncoder("cam", CodecSettings(threshold=0.0, ssim_downscale=1))
    decoder = FrameDecoder()
    given_pictures = [True, True, False, True, True, True]
    records = []
    for i, ((image, picture), with_picture) in enumerate(zip(frames, given_pictures, strict=True)):
        if i == 4:
            encoder.request_key()
        record = encoder.encode(image, i, picture=picture if with_picture else None)
        assert np.array_equal(decoder.decode(unpack_record(pack_record(record))), image)
        records.append(record)
    assert [r.header.kind for r in records] == [
        Kind.KEY,
        Kind.MEMBER,
        Kind.KEY,
        Kind.MEMBER,
        Kind.KEY,
        Kind.MEMBER,
    ]
    assert [Stage.YUV420 in r.header.stages for r in records] == [True, True, False, False, True, True]


def test_a_picture_that_is_not_the_frame_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    """A capture bug must not cost frames: the key checks the picture against the frame, and codes the frame."""
    (image, _picture), (_other, wrong) = _random_pictures(9, 32, 24, 1)
    record = FrameEncoder("cam", CodecSettings(ssim_downscale=1)).encode(image, 0, picture=wrong)
    assert Stage.YUV420 not in record.header.stages
    assert "not the conversion of the picture" in caplog.text
    assert np.array_equal(decode_record(unpack_record(pack_record(record))), image)


def test_odd_sizes_and_grey_frames_are_coded_as_frames() -> None:
    rng = np.random.default_rng(1)
    odd = rng.integers(0, 256, yuv.picture_bytes(33, 24), dtype=np.uint8).tobytes()
    frame = yuv.to_bgr(odd, 33, 24)
    record = FrameEncoder("cam", CodecSettings(ssim_downscale=1)).encode(frame, 0, picture=odd)
    assert Stage.YUV420 not in record.header.stages
    assert np.array_equal(decode_record(record), frame)


def test_the_conversion_is_the_one_the_wire_format_document_states() -> None:
    """``docs/wire-format.md``'s formula, written out sample by sample from its text, against the decoder's."""
    rng = np.random.default_rng(3)
    width, height = 10, 6
    plane = rng.integers(0, 256, (height * 3 // 2, width), dtype=np.uint8)
    plane[0, :4] = (0, 255, 16, 235)  # both clamps
    plane[height, :2] = (0, 255)
    got = yuv.to_bgr(plane.tobytes(), width, height, laid_out=True)
    for y in range(height):
        for x in range(width):
            luma = int(plane[y, x])
            u = (int(plane[height + y // 2, x // 2]) - 128) * 8
            v = (int(plane[height + y // 2, width // 2 + x // 2]) - 128) * 8
            lum = ((luma - 16) * 8 * 9539) // 65536
            terms = (
                (u * 16525) // 65536,
                (u * -3209) // 65536 + (v * -6660) // 65536,
                (v * 13075) // 65536,
            )
            want = [min(255, max(0, lum + t)) for t in terms]
            assert list(got[y, x]) == want, (y, x)


def test_the_layout_is_y_then_u_and_v_side_by_side() -> None:
    width, height = 6, 4
    picture = bytes(range(yuv.picture_bytes(width, height)))
    plane = yuv.tall(picture, width, height)
    assert plane.shape == (1, 6, 6)
    assert plane[0, :4].ravel().tolist() == list(range(24))
    assert plane[0, 4:, :3].ravel().tolist() == list(range(24, 30))  # U's two rows of three
    assert plane[0, 4:, 3:].ravel().tolist() == list(range(30, 36))  # V's
    with pytest.raises(ValueError, match="even width and height"):
        yuv.tall(bytes(yuv.picture_bytes(5, 4)), 5, 4)


GOLDEN_V7_KEY_HEX = "".join(
    [
        "4343545607000103",  # magic, version 7, key, clock synchronised, bgr8
        "600010000c000003",  # header 96 bytes, 16 x 12, tolerance 0, three stages
        "b2000000",  # payload length 178
        "0000000000000000" * 3,  # seq, key_seq, ref_seq 0
        "15cd853dfe9c9717",  # capture time 1_700_000_000_123_456_789 ns
        "0000803f",  # ssim 1.0
        "77b744cfe2e8d0c0f2b842e66ba6d959" + "00" * 16,  # XXH3-128 of the BGR frame, then 16 zero bytes
        "04" + b"cam1".hex(),
        "0e0508",  # stages YUV420, MED, CTX
        # payload: the picture's plane (18 x 16) after MED, as one CTX plane
        "074100000000000000000000000000000000f13000073900069c02002e3900123900129c060006390056720016ab0100",
        "12e401d5120001e41d0001b9100002008080010080800167000000128ed80077d8af00b981f303af8f6301fee092a527",
        "df9142d3e6b38279b2c24a790b250be41e713cede26f866222f482319918130fa43aac1f412f23094244bbfe6790c3fe",
        "bcb80e36503dbef3bca8fd8c4593d18699a66dfd4c47434cdd58745858105f5f5fcb",
        "157ac60b",  # CRC-32 of everything before it
    ]
)


def _golden_key() -> Record:
    """A 16×12 picture with every sample set by a formula, coded as a key."""
    width, height = 16, 12
    luma = (np.arange(width * height) * 7 + 16).astype(np.uint8)
    u = (np.arange(48) * 3 + 60).astype(np.uint8)
    picture = luma.tobytes() + u.tobytes() + u[::-1].tobytes()
    image = yuv.to_bgr(picture, width, height)
    return FrameEncoder("cam1", CodecSettings(ssim_downscale=1)).encode(
        image, 1_700_000_000_123_456_789, picture=picture
    )


def test_golden_bytes_pin_a_whole_version_7_key() -> None:
    """The layout, the stage id, MED over the whole plane and CTX's bytes, and the frame hash of the BGR frame;
    the same record claiming version 6 is refused, so a version-6 reader never misreads one."""
    golden = bytes.fromhex(GOLDEN_V7_KEY_HEX)
    record = _golden_key()
    assert pack_record(record) == golden
    parsed = unpack_record(golden)
    assert parsed == record
    image, held = reconstruct(parsed)
    assert held.shape == (1, 18, 16)
    assert hash_pixels(image.data, FrameHash.XXH3_128) == parsed.header.frame_hash
    older = bytearray(golden)
    older[4] = 6
    older[-4:] = struct.pack("<I", zlib.crc32(older[:-4]))
    with pytest.raises(WireFormatError, match="need wire format version 7"):
        unpack_record(bytes(older))
    assert len(golden) == FIXED_SIZE + 1 + 4 + 3 + 178 + 4


def _header(**changes: object) -> RecordHeader:
    """test_wire's member header, made a YUV420 one: a 4x2 BGR frame, an XXH3-128 hash (version 7)."""
    yuv420: dict[str, object] = {
        "width": 4,
        "height": 2,
        "pixel_format": PixelFormat.BGR8,
        "stages": (Stage.YUV420, Stage.RESIDUAL, Stage.CTX),
        "frame_hash": bytes(32),
        "hash_kind": FrameHash.XXH3_128,
    }
    return wire_header(**{**yuv420, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 5}, "YUV420 needs an even width and height"),
        ({"height": 3}, "YUV420 needs an even width and height"),
        ({"pixel_format": PixelFormat.GRAY8}, "YUV420 needs a BGR frame"),
        ({"stages": (Stage.YUV420, Stage.RESIDUAL, Stage.RCT, Stage.CTX)}, "YUV420 goes with"),
        ({"stages": (Stage.YUV420, Stage.RESIDUAL_Q, Stage.CTX), "tolerance": 2}, "YUV420 goes with"),
        ({"stages": (Stage.YUV420, Stage.MED_CHROMA, Stage.CTX), "ref_seq": 5}, "YUV420 goes with"),
        ({"stages": (Stage.RESIDUAL, Stage.YUV420, Stage.CTX)}, "out of order"),
        ({"stages": (Stage.YUV420, Stage.YUV420, Stage.CTX)}, "out of order"),
        ({"stages": (Stage.RESIDUAL_QY, Stage.CTX), "tolerance": 2}, "quantise YUV420's Y rows"),
        ({"stages": (Stage.QUANTIZE_Y, Stage.CTX), "tolerance": 2, "ref_seq": 5}, "quantise YUV420's Y rows"),
        (
            {"stages": (Stage.YUV420, Stage.RESIDUAL_QY, Stage.CTX), "tolerance": 0},
            "tolerance of 1..32, got 0",
        ),
        ({"stages": (Stage.YUV420, Stage.RESIDUAL_QY, Stage.CTX), "tolerance": 33}, "tolerance of 1..32"),
        (
            {"stages": (Stage.YUV420, Stage.RESIDUAL_QY, Stage.RESIDUAL, Stage.CTX), "tolerance": 2},
            "out of order",
        ),
    ],
)
def test_records_that_break_the_rules_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        pack_record(Record(_header(**changes), b""))


def test_a_member_needs_its_references_picture_and_says_so() -> None:
    """Held as a frame, the reference is of the wrong shape: the error says what is needed (the archive and
    the decoder hold what ``reconstruct`` returns)."""
    frames = _random_pictures(2, 32, 24, 1)
    encoder = FrameEncoder("cam", CodecSettings(threshold=0.0, ssim_downscale=1))
    key, member = (encoder.encode(image, i, picture=picture) for i, (image, picture) in enumerate(frames))
    assert Stage.RESIDUAL in member.header.stages
    key_image, key_planes = reconstruct(key)
    with pytest.raises(WireFormatError, match="a YUV420 member needs a YUV420 reference"):
        decode_record(member, key_image)
    assert np.array_equal(reconstruct(member, key_planes)[0], frames[1][0])


def test_ten_thousand_mutated_picture_records_decode_or_raise_one_error() -> None:
    """Mutations with a repaired CRC reach the stage decoders: keys and members, CTX and zstd, with and without
    MED; each must decode (to a frame whose hash matched) or raise WireFormatError."""
    frames = _random_pictures(11, 48, 32, 2)
    planes = [yuv.tall(picture, 48, 32) for _image, picture in frames]
    records: list[Record] = []
    references: list[np.ndarray | None] = []
    base = FrameEncoder("cam", CodecSettings(threshold=0.0, ssim_downscale=1)).encode(
        frames[0][0], 0, picture=frames[0][1]
    )
    for entropy in (Stage.CTX, Stage.ZSTD):
        for stages, index, reference, tolerance in (
            ((Stage.YUV420, Stage.MED, entropy), 0, None, 0),
            ((Stage.YUV420, Stage.RESIDUAL, entropy), 1, planes[0], 0),
            ((Stage.YUV420, Stage.RESIDUAL, Stage.MED, entropy), 2, planes[1], 0),
            ((Stage.YUV420, Stage.QUANTIZE_Y, Stage.MED, entropy), 0, None, 2),
            ((Stage.YUV420, Stage.RESIDUAL_QY, entropy), 1, planes[0], 3),
            ((Stage.YUV420, Stage.RESIDUAL_QY, Stage.MED, entropy), 2, planes[1], 2),
        ):
            payload, recon = encode_planes(planes[index], stages, reference=reference, tolerance=tolerance)
            header = replace(
                base.header,
                seq=index,
                key_seq=0,
                ref_seq=index if reference is None else index - 1,
                kind=Kind.KEY if reference is None else Kind.MEMBER,
                stages=stages,
                tolerance=tolerance,
                frame_hash=frame_hash(yuv.to_bgr(recon.data, 48, 32, laid_out=True)),
            )
            records.append(Record(header, payload))
            references.append(reference)
    packed = [pack_record(r) for r in records]
    for record, reference, data in zip(records, references, packed, strict=True):  # all decode as made
        image = reconstruct(unpack_record(data), reference)[0]
        assert cv2.norm(image, frames[record.header.seq][0], cv2.NORM_INF) <= record.header.tolerance
    rng = random.Random(7)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(10_000):
        index = rng.randrange(len(packed))
        data = bytearray(packed[index])
        header_length = struct.unpack_from("<H", data, 8)[0]
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(0 if rng.random() < 0.2 else header_length, len(data) - 4)
            data[pos] = rng.randrange(256)
        data[-4:] = struct.pack("<I", zlib.crc32(data[:-4]))
        try:
            reconstruct(unpack_record(bytes(data)), references[index])
            outcomes["decoded"] += 1
        except WireFormatError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 9000, outcomes


@needs_ffmpeg
def test_the_ffmpeg_child_hands_out_each_frames_picture_and_opencv_none(pets_cut: Path) -> None:
    with VideoFileSource(pets_cut, decoder="ffmpeg") as source:
        for _ in range(3):
            frame = source.read()
            assert frame is not None
            assert frame.picture is not None
            assert np.array_equal(yuv.to_bgr(frame.picture, 768, 576), frame.image)
    with VideoFileSource(pets_cut, decoder="opencv") as source:
        frame = source.read()
        assert frame is not None
        assert frame.picture is None
    assert cv2.norm(frame.image) > 0
