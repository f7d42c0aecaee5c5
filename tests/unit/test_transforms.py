"""Pixel stages and the stage pipeline: exact inverses, bounded error, bounded allocation."""

from __future__ import annotations

import hashlib
import tracemalloc
from dataclasses import replace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.codec import native
from agent.codec import transforms as T
from agent.codec.pipeline import decode_planes, encode_planes, pixel_stages, signedness
from agent.codec.wire import Kind, PixelFormat, RecordHeader, Stage
from agent.errors import WireFormatError

planes_strategy = hnp.arrays(
    np.uint8,
    st.tuples(st.sampled_from([1, 3]), st.integers(1, 17), st.integers(1, 23)),
)


@given(planes_strategy, st.lists(st.booleans(), min_size=3, max_size=3))
@settings(max_examples=150, deadline=None)
def test_med_inverts_exactly(planes: np.ndarray, flags: list[bool]) -> None:
    """The compiled MED and the numpy fallback give the same residuals and each inverts the other."""
    signed = tuple(flags[: planes.shape[0]])
    residuals = T.med(planes, signed)
    assert np.array_equal(residuals, T.med_numpy(planes, signed))
    assert np.array_equal(T.unmed(residuals, signed), planes)
    assert np.array_equal(T.unmed_numpy(residuals, signed), planes)


@pytest.mark.parametrize("med", [T.med, T.med_numpy])
def test_med_matches_the_scalar_definition(med: object) -> None:
    rng = np.random.default_rng(3)
    plane = rng.integers(0, 256, (1, 6, 7), dtype=np.uint8)
    res = med(plane, (False,))  # type: ignore[operator]
    p = plane[0].astype(int)
    for y in range(6):
        for x in range(7):
            a = p[y, x - 1] if x else 0
            b = p[y - 1, x] if y else 0
            c = p[y - 1, x - 1] if x and y else 0
            pred = min(max(a + b - c, min(a, b)), max(a, b))
            assert res[0, y, x] == (p[y, x] - pred) % 256


FIRST_STAGES = [None, Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.QUANTIZE, Stage.RESIDUAL_QG, Stage.QUANTIZE_G]
FOLLOW_G = (Stage.RESIDUAL_QG, Stage.QUANTIZE_G)


@given(
    st.sampled_from([1, 3])
    .flatmap(lambda c: st.tuples(st.just(c), st.integers(1, 19), st.integers(1, 70)))
    .flatmap(lambda shape: st.tuples(hnp.arrays(np.uint8, shape), hnp.arrays(np.uint8, shape))),
    st.sampled_from(FIRST_STAGES),
    st.integers(1, 255),
    st.booleans(),
    st.sampled_from([None, Stage.MED, Stage.MED_CHROMA]),
)
@settings(max_examples=600, deadline=None)
def test_fused_pixel_stages_match_the_stages_one_by_one(
    pair: tuple[np.ndarray, np.ndarray], first: Stage | None, tolerance: int, rct: bool, med: Stage | None
) -> None:
    """The compiled one pass (residual exact or quantised, or quantised values, with or without B and R
    following G; RCT; MED on every plane or the chroma ones) gives what the stages give one at a time in numpy."""
    planes, reference = pair
    colour = planes.shape[0] == 3
    if not colour:
        first = None if first in FOLLOW_G else first
        med = None if med is Stage.MED_CHROMA else med
    rct = rct and colour and first not in FOLLOW_G
    chosen = (first, Stage.RCT if rct else None, med)
    stages = (*[s for s in chosen if s is not None], Stage.CTX)
    signed = signedness(stages, planes.shape[0])
    tolerance = tolerance if first in (Stage.RESIDUAL_Q, Stage.QUANTIZE, *FOLLOW_G) else 0
    ref = reference if first in (Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.RESIDUAL_QG) else None
    fused, fused_recon = native.pixels(
        planes,
        ref,
        rct=rct,
        med=tuple(med is Stage.MED or (med is Stage.MED_CHROMA and k > 0) for k in range(planes.shape[0])),
        signed=signed,
        tolerance=tolerance,
        follow_g=first in FOLLOW_G,
    )
    expected, expected_recon = planes, None
    if first is Stage.RESIDUAL:
        expected = T.residual(expected, reference)
    elif first is Stage.RESIDUAL_Q:
        expected, expected_recon = T.quantize_residual(expected, reference, tolerance)
    elif first is Stage.QUANTIZE:
        expected, expected_recon = T.quantize(expected, tolerance)
    elif first is Stage.RESIDUAL_QG:
        expected, expected_recon = T.quantize_residual_g(expected, reference, tolerance)
    elif first is Stage.QUANTIZE_G:
        expected, expected_recon = T.quantize_g(expected, tolerance)
    if rct:
        expected = T.rct(expected)
    if med is Stage.MED:
        expected = T.med_numpy(expected, signed)
    elif med is Stage.MED_CHROMA:
        expected = np.concatenate([expected[:1], T.med_numpy(expected[1:], signed[1:])])
    assert np.array_equal(fused, expected)
    if expected_recon is None:
        assert fused_recon is None
    else:
        assert fused_recon is not None
        assert np.array_equal(fused_recon, expected_recon)
    data, recon = pixel_stages(planes, stages, reference=ref, tolerance=tolerance)
    assert np.array_equal(data, expected)
    assert recon is planes if expected_recon is None else np.array_equal(recon, expected_recon)


@given(hnp.arrays(np.uint8, st.tuples(st.just(3), st.integers(1, 9), st.integers(1, 9))))
def test_rct_inverts_exactly(planes: np.ndarray) -> None:
    assert np.array_equal(T.unrct(T.rct(planes)), planes)


def test_residual_is_modular_where_cv_subtract_saturates() -> None:
    key = np.array([[[200, 10, 0]]], dtype=np.uint8)
    member = np.array([[[10, 200, 255]]], dtype=np.uint8)
    assert np.array_equal(
        cv2.add(cv2.subtract(member, key), key), np.array([[[200, 200, 255]]])
    )  # the seed's loss
    assert np.array_equal(T.unresidual(T.residual(member, key), key), member)


@given(planes_strategy, planes_strategy, st.integers(1, 8))
@settings(max_examples=150, deadline=None)
def test_quantisers_keep_the_error_bound(a: np.ndarray, b: np.ndarray, tolerance: int) -> None:
    b = np.resize(b, a.shape).astype(np.uint8)
    codes, recon = T.quantize_residual(a, b, tolerance)
    assert int(np.abs(recon.astype(int) - a).max()) <= tolerance
    assert np.array_equal(T.dequantize_residual(codes, b, tolerance), recon)
    codes, recon = T.quantize(a, tolerance)
    assert int(np.abs(recon.astype(int) - a).max()) <= tolerance
    assert np.array_equal(T.dequantize(codes, tolerance), recon)


colour_pairs = st.tuples(st.integers(1, 17), st.integers(1, 23)).flatmap(
    lambda hw: st.tuples(
        hnp.arrays(
            np.uint8, (3, *hw), elements=st.sampled_from([0, 1, 2, 3, 4, 60, 128, 251, 252, 253, 254, 255])
        ),
        hnp.arrays(np.uint8, (3, *hw)),
    )
)


@given(colour_pairs, st.integers(1, 40))
@settings(max_examples=200, deadline=None)
def test_b_and_r_follow_g_within_the_bound_and_carry_its_error(
    pair: tuple[np.ndarray, np.ndarray], tolerance: int
) -> None:
    """RESIDUAL_QG and QUANTIZE_G: every channel within T, B and R moved by G's very error wherever no clamp at
    0 or 255 stopped them (what keeps the next residual's chroma clean), and the decoder rebuilds it."""
    current, reference = pair
    inter_codes, inter = T.quantize_residual_g(current, reference, tolerance)
    intra_codes, intra = T.quantize_g(current, tolerance)
    assert np.array_equal(T.dequantize_residual_g(inter_codes, reference, tolerance), inter)
    assert np.array_equal(T.dequantize_g(intra_codes, tolerance), intra)
    for recon in (inter, intra):
        error = recon.astype(int) - current
        assert int(np.abs(error).max()) <= tolerance
        unclamped = (recon > 0) & (recon < 255)
        for channel in (0, 2):
            free = unclamped[channel]
            assert np.array_equal(error[channel][free], error[1][free])


@pytest.mark.parametrize("tolerance", [1, 2, 32, 127, 128, 255])
def test_dequantisers_follow_their_definition_for_any_code_a_record_can_hold(tolerance: int) -> None:
    """Every byte as a code, up to the T=255 a header may declare: no int16 overflow, no wrap-around."""
    step = 2 * tolerance + 1
    codes = np.arange(256, dtype=np.uint8).reshape(1, 2, 128)
    reference = np.arange(255, -1, -1, dtype=np.uint8).reshape(1, 2, 128)
    signed = codes.view(np.int8).ravel().tolist()
    expected = [
        min(255, max(0, r + q * step)) for q, r in zip(signed, reference.ravel().tolist(), strict=True)
    ]
    assert T.dequantize_residual(codes, reference, tolerance).ravel().tolist() == expected
    assert T.dequantize(codes, tolerance).ravel().tolist() == [min(255, c * step) for c in range(256)]
    values = np.arange(256, dtype=np.uint8).reshape(1, 1, 256)
    assert T.quantize(values, tolerance)[0].ravel().tolist() == [(v + tolerance) // step for v in range(256)]
    # Stages 9 and 10 (docs/wire-format.md): G as stages 2 and 3 rebuild it, B and R from their chroma byte.
    rng = np.random.default_rng(tolerance)
    colour = np.stack([np.arange(256), rng.permutation(256), rng.permutation(256)]).astype(np.uint8)
    colour = colour.reshape(3, 2, 128)
    back = np.stack([rng.permutation(256), np.arange(255, -1, -1), rng.permutation(256)]).astype(np.uint8)
    back = back.reshape(3, 2, 128)
    g = [min(255, max(0, r + q * step)) for q, r in zip(signed, back[1].ravel().tolist(), strict=True)]
    recon = T.dequantize_residual_g(colour, back, tolerance)
    assert recon[1].ravel().tolist() == g
    for channel, plane in ((0, 1), (2, 2)):
        moved = [
            (c - 128 + r + gv - rg) % 256
            for c, r, gv, rg in zip(
                colour[plane].ravel().tolist(),
                back[channel].ravel().tolist(),
                g,
                back[1].ravel().tolist(),
                strict=True,
            )
        ]
        assert recon[channel].ravel().tolist() == moved
    recon = T.dequantize_g(colour, tolerance)
    g = [min(255, c * step) for c in range(256)]
    assert recon[1].ravel().tolist() == g
    for channel, plane in ((0, 1), (2, 2)):
        assert recon[channel].ravel().tolist() == [
            (c - 128 + gv) % 256 for c, gv in zip(colour[plane].ravel().tolist(), g, strict=True)
        ]


def test_dequantising_a_1080p_frame_needs_no_frame_sized_temporaries() -> None:
    """Its output and one band of int16 rows: a whole-frame int16 copy made the T=2 bench peak at 143 MB."""
    rng = np.random.default_rng(4)
    codes = rng.integers(-3, 4, (3, 1080, 1920)).astype(np.int8).view(np.uint8)
    reference = rng.integers(0, 256, (3, 1080, 1920), dtype=np.uint8)
    tracemalloc.start()
    try:
        T.dequantize_residual(codes, reference, 2)
        T.dequantize(codes, 2)
        T.dequantize_residual_g(codes, reference, 2)
        T.dequantize_g(codes, 2)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < codes.nbytes + 4 * 2**20, peak


def test_block_chroma_lays_each_2x2_block_out_as_the_document_says() -> None:
    """A 3×5 frame: odd in both directions, so the last row and column hold part blocks."""
    planes = np.arange(45, dtype=np.uint8).reshape(3, 3, 5) * 7
    out = T.block_chroma(planes)
    assert np.array_equal(out[0], planes[0])
    for k in (1, 2):
        p = planes[k].astype(int)
        expected = np.zeros((3, 5), dtype=int)
        for by in range(2):  # ⌈3/2⌉ block rows, ⌈5/2⌉ block columns; the quadrants split at row 2, column 3
            for bx in range(3):
                t = p[2 * by, 2 * bx]
                expected[by, bx] = t - 128
                if 2 * bx + 1 < 5:
                    expected[by, 3 + bx] = p[2 * by, 2 * bx + 1] - t
                if 2 * by + 1 < 3:
                    expected[2 + by, bx] = p[2 * by + 1, 2 * bx] - t
                    if 2 * bx + 1 < 5:
                        expected[2 + by, 3 + bx] = p[2 * by + 1, 2 * bx + 1] - t
        assert np.array_equal(out[k], expected % 256), k


@given(hnp.arrays(np.uint8, st.tuples(st.just(3), st.integers(1, 17), st.integers(1, 23))))
@settings(max_examples=200, deadline=None)
def test_block_chroma_inverts_exactly_compiled_and_in_numpy(planes: np.ndarray) -> None:
    blocked = T.block_chroma_numpy(planes)
    assert np.array_equal(T.unblock_chroma_numpy(blocked), planes)
    if native.AVAILABLE:
        assert np.array_equal(native.blocks(planes, inverse=False), blocked)
        assert np.array_equal(native.blocks(blocked, inverse=True), planes)
    signed = (True, False, False)
    for luma in (False, True):
        assert np.array_equal(
            T.unmed_blocks(T.med_blocks(blocked, signed, luma=luma), signed, luma=luma), blocked
        )


def test_constant_chroma_blocks_lay_out_as_zeros() -> None:
    """What the layout is for: chroma constant over aligned 2×2 blocks leaves only the top-left quadrant."""
    rng = np.random.default_rng(3)
    chroma = np.repeat(np.repeat(rng.integers(0, 256, (2, 5, 7), dtype=np.uint8), 2, axis=1), 2, axis=2)
    planes = np.concatenate([rng.integers(0, 256, (1, 10, 14), dtype=np.uint8), chroma])
    out = T.block_chroma(planes)
    assert not out[1:, :5, 7:].any()
    assert not out[1:, 5:].any()
    assert np.array_equal(out[1:, :5, :7], (chroma[:, ::2, ::2] - np.uint8(128)))


def _jfif_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """docs/wire-format.md's tables for JPEG_CHROMA (JFIF's YCbCr → RGB in libjpeg's fixed point)."""
    x = np.arange(256, dtype=np.int64) - 128
    return (91881 * x + 32768) >> 16, (116130 * x + 32768) >> 16, -46802 * x, -22554 * x + 32768


def _fancy_up(q: np.ndarray) -> np.ndarray:
    """docs/wire-format.md's upsampling, written from the formula: near = 3·q[i][j] + q[i′][j] with i′ the
    row above (even output rows) or below (odd), clamped to the plane; out = (3·near + near at the column
    beside (left for even columns, right for odd), clamped + 8 or 7) >> 4."""
    h2, w2 = q.shape
    out = np.zeros((2 * h2, 2 * w2), dtype=np.int64)
    for y in range(2 * h2):
        i = y // 2
        i2 = min(max(i + (1 if y % 2 else -1), 0), h2 - 1)
        near = 3 * q[i].astype(np.int64) + q[i2]
        for x in range(2 * w2):
            j = x // 2
            j2 = min(max(j + (1 if x % 2 else -1), 0), w2 - 1)
            out[y, x] = (3 * near[j] + near[j2] + (7 if x % 2 else 8)) >> 4
    return out


def _jpeg_inverse_from_the_document(coded: np.ndarray) -> np.ndarray:
    cr_r, cb_b, cr_g, cb_g = _jfif_tables()
    g, d_b, d_r, quarter = (coded[k].astype(np.int64) for k in range(4))
    h, w = g.shape
    cb, cr = _fancy_up(quarter[: h // 2, : w // 2]), _fancy_up(quarter[: h // 2, w // 2 :])
    y = g - ((cb_g[cb] + cr_g[cr]) >> 16)
    b = (np.clip(y + cb_b[cb], 0, 255) + d_b) % 256
    r = (np.clip(y + cr_r[cr], 0, 255) + d_r) % 256
    return np.stack([b, g, r]).astype(np.uint8)


@pytest.mark.skipif(not native.AVAILABLE, reason="JPEG_CHROMA is compiled only")
@given(
    st.tuples(st.integers(1, 9), st.integers(1, 12)).flatmap(
        lambda hw: hnp.arrays(np.uint8, (3, 2 * hw[0], 2 * hw[1]))
    )
)
@settings(max_examples=150, deadline=None)
def test_jpeg_chroma_inverts_any_frame_as_the_document_says(planes: np.ndarray) -> None:
    coded = native.jpeg(planes, inverse=False)
    assert coded.shape == (4, *planes.shape[1:])
    assert not coded[3, planes.shape[1] // 2 :].any(), "the quarter planes fill the top half only"
    assert np.array_equal(native.jpeg(coded, inverse=True), planes)
    assert np.array_equal(_jpeg_inverse_from_the_document(coded), planes)
    assert np.array_equal(T.jpeg_inverse_numpy(coded), planes)  # the fallback for installs without the module
    noisy = np.random.default_rng(int(planes.sum())).integers(0, 256, coded.shape, dtype=np.uint8)
    assert np.array_equal(T.jpeg_inverse_numpy(noisy), native.jpeg(noisy, inverse=True))


def _frame_and_its_jpeg(pets_cut: object) -> tuple[np.ndarray, np.ndarray]:
    """The clip's first frame, and its planes through OpenCV's 4:2:0 JPEG (quality 90) and back."""
    cap = cv2.VideoCapture(str(pets_cut))
    frame = cap.read()[1]
    cap.release()
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return frame, T.to_planes(cv2.imdecode(data, cv2.IMREAD_COLOR))


@pytest.mark.skipif(not native.AVAILABLE, reason="JPEG_CHROMA is compiled only")
def test_jpeg_chroma_finds_a_jpeg_stills_chroma(pets_cut: object) -> None:
    """A frame through OpenCV's 4:2:0 JPEG: the quarter planes recovered leave B and R's residuals mostly zero
    (measured: 3.2 % of samples not, most of them at or next to the 4.6 % of pixels a channel of which is
    clipped at 0 or 255), where the video frame itself leaves most of them not zero."""
    frame, still = _frame_and_its_jpeg(pets_cut)
    coded = native.jpeg(still, inverse=False)
    assert np.count_nonzero(coded[1:3]) < 0.05 * coded[1:3].size
    assert np.count_nonzero(native.jpeg(T.to_planes(frame), inverse=False)[1:3]) > 0.5 * coded[1:3].size
    with pytest.raises(WireFormatError, match="even height and width"):
        native.jpeg(still[:, :-1], inverse=False)


@pytest.mark.skipif(not native.AVAILABLE, reason="JPEG_CHROMA is compiled only")
@pytest.mark.parametrize("tolerance", [1, 2, 5])
def test_jpeg_chroma_after_quantize_g_keeps_the_bound(pets_cut: object, tolerance: int) -> None:
    """With a tolerance the stage codes QUANTIZE_G's reconstruction (plane 0 G's codes): decoded as encoded,
    every pixel within T of the still."""
    _frame, still = _frame_and_its_jpeg(pets_cut)
    stages = (Stage.QUANTIZE_G, Stage.JPEG_CHROMA, Stage.MED, Stage.CTX)
    payload, recon = encode_planes(still, stages, tolerance=tolerance)
    header = replace(_header_for(still, stages, tolerance), kind=Kind.KEY, key_seq=2)
    assert np.array_equal(decode_planes(header, payload), recon)
    assert int(np.abs(recon.astype(int) - still).max()) == tolerance
    exact, _ = encode_planes(still, (Stage.JPEG_CHROMA, Stage.MED, Stage.CTX))
    assert len(payload) < len(exact)


def _header_for(planes: np.ndarray, stages: tuple[Stage, ...], tolerance: int = 0) -> RecordHeader:
    c, h, w = planes.shape
    ref = any(s in (Stage.RESIDUAL, Stage.RESIDUAL_Q) for s in stages)
    return RecordHeader(
        camera_id="c",
        seq=2,
        key_seq=1,
        ref_seq=1 if ref else 2,
        kind=Kind.MEMBER,
        capture_time_ns=0,
        width=w,
        height=h,
        pixel_format=PixelFormat(c),
        stages=stages,
        frame_hash=hashlib.sha256(b"").digest(),
        tolerance=tolerance,
    )


STAGE_LISTS = [
    (Stage.RCT, Stage.MED, Stage.ZSTD),
    (Stage.MED, Stage.PACKBITS, Stage.ZSTD),
    (Stage.RESIDUAL, Stage.PACKBITS, Stage.ZSTD),
    (Stage.RESIDUAL, Stage.MED, Stage.ZSTD),
    (Stage.RESIDUAL, Stage.RCT, Stage.MED, Stage.PACKBITS),
    (Stage.RCT, Stage.BLOCK_CHROMA, Stage.MED, Stage.CTX),
    (Stage.RESIDUAL, Stage.RCT, Stage.BLOCK_CHROMA, Stage.CTX),
    (Stage.RESIDUAL, Stage.RCT, Stage.BLOCK_CHROMA, Stage.MED_CHROMA, Stage.ZSTD),
    (Stage.JPEG_CHROMA, Stage.MED, Stage.CTX),
    (Stage.JPEG_CHROMA, Stage.PACKBITS, Stage.ZSTD),
    (Stage.PACKBITS,),
    (),
]


@pytest.mark.parametrize("stages", STAGE_LISTS, ids=lambda s: "+".join(x.name for x in s) or "raw")
def test_pipeline_round_trips_real_frames(pets_cut: object, stages: tuple[Stage, ...]) -> None:
    cap = cv2.VideoCapture(str(pets_cut))
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    ref, cur = T.to_planes(frames[0]), T.to_planes(frames[2])
    payload, recon = encode_planes(cur, stages, reference=ref)
    assert np.array_equal(recon, cur)
    assert np.array_equal(decode_planes(_header_for(cur, stages), payload, ref), cur)


@pytest.mark.parametrize("med", [Stage.MED, Stage.MED_CHROMA])
@pytest.mark.parametrize(
    "first", [None, Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.RESIDUAL_QG, Stage.QUANTIZE_G]
)
def test_med_then_ctx_decodes_in_one_pass_to_the_encoders_reconstruction(
    pets_cut: object, first: Stage | None, med: Stage
) -> None:
    """Records whose stages end MED or MED_CHROMA, CTX take MED off inside CTX's decode pass (the chroma
    planes alone for MED_CHROMA): real frames, exact and at T=2, back to the encoder's reconstruction."""
    cap = cv2.VideoCapture(str(pets_cut))
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    ref, cur = T.to_planes(frames[0]), T.to_planes(frames[2])
    makes_own_chroma = first in (Stage.RESIDUAL_QG, Stage.QUANTIZE_G)
    chosen = (first, None if makes_own_chroma else Stage.RCT, med, Stage.CTX)
    stages = tuple(s for s in chosen if s is not None)
    tolerance = 2 if first in (Stage.RESIDUAL_Q, *FOLLOW_G) else 0
    referenced = first in (Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.RESIDUAL_QG)
    payload, recon = encode_planes(cur, stages, reference=ref if referenced else None, tolerance=tolerance)
    header = replace(_header_for(cur, stages, tolerance), ref_seq=1 if referenced else 2)
    assert np.array_equal(decode_planes(header, payload, ref if referenced else None), recon)


@pytest.mark.parametrize("entropy", [Stage.CTX, Stage.ZSTD])
@pytest.mark.parametrize("med", [None, Stage.MED, Stage.MED_CHROMA])
@pytest.mark.parametrize(
    "first", [None, Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.RESIDUAL_QG, Stage.QUANTIZE_G]
)
def test_block_chroma_round_trips_after_every_stage_that_makes_chroma(
    pets_cut: object, first: Stage | None, med: Stage | None, entropy: Stage
) -> None:
    """Real frames cut to an odd size (part blocks on the last row and column), exact and at T=2."""
    cap = cv2.VideoCapture(str(pets_cut))
    frames = [cap.read()[1][:575, :767] for _ in range(3)]
    cap.release()
    ref, cur = T.to_planes(frames[0]), T.to_planes(frames[2])
    makes_own_chroma = first in (Stage.RESIDUAL_QG, Stage.QUANTIZE_G)
    chosen = (first, None if makes_own_chroma else Stage.RCT, Stage.BLOCK_CHROMA, med, entropy)
    stages = tuple(s for s in chosen if s is not None)
    tolerance = 2 if first in (Stage.RESIDUAL_Q, *FOLLOW_G) else 0
    referenced = first in (Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.RESIDUAL_QG)
    payload, recon = encode_planes(cur, stages, reference=ref if referenced else None, tolerance=tolerance)
    header = replace(_header_for(cur, stages, tolerance), ref_seq=1 if referenced else 2)
    decoded = decode_planes(header, payload, ref if referenced else None)
    assert np.array_equal(decoded, recon)
    assert int(np.abs(recon.astype(int) - cur).max()) <= tolerance


def test_pipeline_refuses_what_does_not_add_up() -> None:
    planes = np.zeros((1, 4, 4), dtype=np.uint8)
    header = _header_for(planes, (Stage.RESIDUAL, Stage.ZSTD))
    payload, _ = encode_planes(planes, header.stages, reference=planes)
    with pytest.raises(WireFormatError, match="needs its reference"):
        decode_planes(header, payload, None)
    with pytest.raises(WireFormatError, match="reference is"):
        decode_planes(header, payload, np.zeros((1, 4, 5), dtype=np.uint8))
    bomb, _ = encode_planes(np.zeros((1, 400, 400), dtype=np.uint8), (Stage.ZSTD,))
    with pytest.raises(WireFormatError, match="expands beyond"):
        decode_planes(_header_for(planes, (Stage.ZSTD,)), bomb)
    with pytest.raises(WireFormatError, match="corrupted"):
        decode_planes(_header_for(planes, (Stage.ZSTD,)), b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(WireFormatError, match="decodes to"):
        decode_planes(_header_for(planes, ()), b"short")
