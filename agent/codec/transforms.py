"""Pixel stages: pure, vectorised, exact transforms on planar ``(C, H, W)`` uint8 arrays.

Each forward transform has an inverse that the decoder runs; the near-lossless ones also return the
reconstruction, because the encoder must predict from what the decoder will hold, never from the original.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.codec import native
from agent.codec.wire import LUMA_GAIN
from agent.errors import WireFormatError

Planes = npt.NDArray[np.uint8]
"""Planar frame data: ``(C, H, W)`` uint8, C-contiguous."""


def to_planes(image: npt.NDArray[np.uint8]) -> Planes:
    """``(H, W)`` grey or ``(H, W, C)`` interleaved → ``(C, H, W)`` planar.

    OpenCV's split writes straight into the planes of one array: 0.75 ms per 1080p frame against 1.8 ms for
    numpy's transposing copy (and ``merge`` 1 ms against 7 ms the other way).
    """
    if image.ndim == 2:
        return np.ascontiguousarray(image[np.newaxis])
    image = np.ascontiguousarray(image)
    planes = np.empty((image.shape[2], image.shape[0], image.shape[1]), dtype=np.uint8)
    cv2.split(image, list(planes))
    return planes


def from_planes(planes: Planes) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`to_planes`."""
    if planes.shape[0] == 1:
        return np.ascontiguousarray(planes[0])
    return np.asarray(cv2.merge([np.ascontiguousarray(plane) for plane in planes]), dtype=np.uint8)


# --- temporal residuals ------------------------------------------------------------------------------------


def residual(current: Planes, reference: Planes) -> Planes:
    """Exact difference mod 256: unlike ``cv2.subtract`` it never saturates, so it loses nothing."""
    return np.subtract(current, reference, dtype=np.uint8)


def unresidual(diff: Planes, reference: Planes) -> Planes:
    return np.add(diff, reference, dtype=np.uint8)


def _step(tolerance: int, step: int | None = None) -> int:
    """The quantiser's step: ``step`` where a stage sets its own (YUV420's Y), else 2T + 1."""
    if step is not None:
        return step
    if tolerance < 1:
        raise ValueError(f"quantising needs tolerance ≥ 1, got {tolerance}")
    return 2 * tolerance + 1


def quantize_residual(current: Planes, reference: Planes, tolerance: int) -> tuple[Planes, Planes]:
    """Quantise ``current − reference`` to steps of 2T+1; returns (codes, reconstruction).

    Code q = sign(d)·⌊(|d|+T)/(2T+1)⌋ keeps |d − q(2T+1)| ≤ T; clamping the reconstruction to 0..255 can
    only move it towards the captured value, which lies in that range, so the bound survives it.
    """
    step = _step(tolerance)
    d = current.astype(np.int16) - reference.astype(np.int16)
    q = np.sign(d) * ((np.abs(d) + tolerance) // step)
    recon = np.clip(reference.astype(np.int16) + q * step, 0, 255).astype(np.uint8)
    return q.astype(np.int8).view(np.uint8), recon


DEQUANTIZE_BAND_ROWS = 64
"""Rows per band in :func:`dequantize_residual`: its int16 temporaries of a whole 1080p frame were 28 MB."""


def dequantize_residual(codes: Planes, reference: Planes, tolerance: int, step: int | None = None) -> Planes:
    step = _step(tolerance, step)
    wide: type[np.signedinteger[Any]] = (
        np.int16 if 128 * step + 255 <= 32767 else np.int32
    )  # a record may say T=255
    recon: Planes = np.empty_like(reference)
    for y in range(0, codes.shape[1], DEQUANTIZE_BAND_ROWS):
        rows = slice(y, y + DEQUANTIZE_BAND_ROWS)
        q: npt.NDArray[np.signedinteger[Any]] = codes[:, rows].view(np.int8).astype(wide)
        np.multiply(q, step, out=q)
        np.add(q, reference[:, rows], out=q)
        np.clip(q, 0, 255, out=q)
        recon[:, rows] = q
    return recon


def quantize(current: Planes, tolerance: int) -> tuple[Planes, Planes]:
    """Intra near-lossless: codes ⌊(x+T)/(2T+1)⌋, reconstruction min(code·(2T+1), 255); |error| ≤ T.

    Both are 256-entry lookups on uint8: no int16 copy of a 1080p frame (25 MB of temporaries) on the way.
    """
    step = _step(tolerance)
    codes = _lookup(((np.arange(256) + tolerance) // step).astype(np.uint8), current)
    return codes, dequantize(codes, tolerance)


def dequantize(codes: Planes, tolerance: int, step: int | None = None) -> Planes:
    step = _step(tolerance, step)
    return _lookup(np.minimum(np.arange(256) * step, 255).astype(np.uint8), codes)


def _lookup(table: npt.NDArray[np.uint8], planes: Planes) -> Planes:
    """``table[planes]`` through OpenCV's LUT (numpy's indexing would first widen every byte to an int64)."""
    flat = np.ascontiguousarray(planes).reshape(-1, planes.shape[-1])
    return np.asarray(cv2.LUT(flat, table), dtype=np.uint8).reshape(planes.shape)


# --- near-lossless YUV420: Y on a lattice whose luma terms stay within T ------------------------------------

LUMA_TERMS = ((np.arange(256) - 16) * LUMA_GAIN) >> 16
"""The conversion's luma term of each Y value (``agent.codec.yuv``): what a change of Y moves B, G and R by."""


def quantize_luma(
    current: Planes, reference: Planes | None, step: int, tolerance: int
) -> tuple[Planes, Planes]:
    """QUANTIZE_Y (no ``reference``) or RESIDUAL_QY's Y codes and reconstruction: each sample goes to the nearer
    of the two lattice points around it (reference + q·step, or q·step, clamped to 0..255) unless that one's
    luma term is more than ``tolerance`` from the sample's, then to the other (``native.luma``, the same bytes:
    docs/wire-format.md says why one of the two always is within it). Codes are int8 with a reference.

    A sample halfway between two points goes to the one with the smaller code when both are within T: the
    residual's noise of ±S/2 then codes as 0 on either side, where taking the lower point coded half of it as −1.
    Measured (150 frames, pictures): T=2 pets 30.09 → 31.39×, motorway 24.47 → 25.22×, intel 80.30 → 81.06×;
    T=1 (steps of 2, where every odd difference is such a tie) pets 22.39 → 24.60×, intel 61.41 → 64.02×,
    motorway 19.09 → 20.27×."""
    y = current.astype(np.int16)
    r = np.zeros_like(y) if reference is None else reference.astype(np.int16)
    q0 = np.floor_divide(y - r, step)
    low = np.clip(r + q0 * step, 0, 255)
    high = np.clip(r + (q0 + 1) * step, 0, 255)
    terms = LUMA_TERMS.astype(np.int16)
    e_low, e_high = np.abs(terms[low] - terms[y]), np.abs(terms[high] - terms[y])
    # The nearer point; on a tie the smaller code (towards the reference, a residual of 0), else the lower.
    nearer = (y - low < high - y) | ((y - low == high - y) & ((q0 >= 0) | (reference is None)))
    pick_low = (e_low <= tolerance) & ((e_high > tolerance) | nearer)
    if reference is not None:
        pick_low |= (
            q0 + 1 > 127
        )  # int8: only step 2 and a difference of 255, whose lower point is within T = 1
    codes = np.where(pick_low, q0, q0 + 1)
    recon = np.where(pick_low, low, high).astype(np.uint8)
    if reference is not None:
        return codes.astype(np.int8).view(np.uint8), recon
    return codes.astype(np.uint8), recon


# --- near-lossless colour: B and R follow G ----------------------------------------------------------------
# Quantising B, G and R each on its own leaves three independent errors, and RCT's chroma planes (B−G, R−G)
# then carry their difference: noise of up to ±2T where decoded video's chroma is smooth, and in a chain it
# re-enters every later residual's chroma. Here only G is quantised; B and R take G's error (clamped to 0..255,
# which only moves them towards the captured value) and their difference from G is coded exactly. Chroma then
# costs what it costs losslessly, and in a chain the error cancels out of the next frame's chroma residual,
# since B, G and R of a pixel carry the same one (docs/wire-format.md, stages 9 and 10). T=2 over exact: PETS
# 1.29× → 1.57×, the 1080p stills 1.12× → 1.54× (docs/benchmarks.md). Sensor noise, which differs from channel
# to channel, still codes smaller quantised each on its own, and the encoder picks per key group.


def _follow_g(
    current: Planes, recon_g: npt.NDArray[np.int16], rows: slice
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """B and R of ``rows`` moved by G's error (``recon_g`` − G) and clamped to 0..255, as int16."""
    error = recon_g - current[1, rows]
    moved = np.empty((2, *recon_g.shape), dtype=np.int16)
    np.add(current[0, rows], error, out=moved[0], dtype=np.int16)
    np.add(current[2, rows], error, out=moved[1], dtype=np.int16)
    np.clip(moved, 0, 255, out=moved)
    return moved[0], moved[1]


def quantize_residual_g(current: Planes, reference: Planes, tolerance: int) -> tuple[Planes, Planes]:
    """RESIDUAL_QG: G's residual quantised as :func:`quantize_residual`'s; returns (codes, reconstruction).

    Codes: plane 0 the int8 code of G, planes 1 and 2 (B' − rB − (G' − rG) + 128) mod 256 and the same for R,
    where ' is the reconstruction and r the reference: RCT's chroma of the reconstruction's move.
    """
    step = _step(tolerance)
    codes: Planes = np.empty_like(current)
    recon: Planes = np.empty_like(current)
    for y in range(0, current.shape[1], DEQUANTIZE_BAND_ROWS):
        rows = slice(y, y + DEQUANTIZE_BAND_ROWS)
        ref = reference[:, rows].astype(np.int16)
        d = current[1, rows].astype(np.int16) - ref[1]
        q = np.sign(d) * ((np.abs(d) + tolerance) // step)
        g = np.clip(ref[1] + q * step, 0, 255)
        b, r = _follow_g(current, g, rows)
        moved = g - ref[1]
        codes[0, rows] = q.astype(np.int8).view(np.uint8)
        codes[1, rows] = (b - ref[0] - moved + 128) & 0xFF
        codes[2, rows] = (r - ref[2] - moved + 128) & 0xFF
        recon[0, rows], recon[1, rows], recon[2, rows] = b, g, r
    return codes, recon


def dequantize_residual_g(codes: Planes, reference: Planes, tolerance: int) -> Planes:
    step = _step(tolerance)
    wide: type[np.signedinteger[Any]] = np.int16 if 128 * step + 255 <= 32767 else np.int32
    recon: Planes = np.empty_like(reference)
    for y in range(0, codes.shape[1], DEQUANTIZE_BAND_ROWS):
        rows = slice(y, y + DEQUANTIZE_BAND_ROWS)
        ref = reference[:, rows].astype(wide)
        g = codes[0, rows].view(np.int8).astype(wide)
        np.multiply(g, step, out=g)
        np.add(g, ref[1], out=g)
        np.clip(g, 0, 255, out=g)
        moved = g - ref[1]
        recon[1, rows] = g
        recon[0, rows] = (codes[1, rows] + ref[0] + moved - 128) & 0xFF
        recon[2, rows] = (codes[2, rows] + ref[2] + moved - 128) & 0xFF
    return recon


def quantize_g(current: Planes, tolerance: int) -> tuple[Planes, Planes]:
    """QUANTIZE_G: G's values quantised as :func:`quantize`'s; returns (codes, reconstruction).

    Codes: plane 0 G's code, planes 1 and 2 (B' − G' + 128) mod 256 and (R' − G' + 128) mod 256: RCT of the
    reconstruction, whose chroma is the captured frame's wherever no clamp moved B or R.
    """
    g_codes, g = quantize(current[1:2], tolerance)
    codes: Planes = np.empty_like(current)
    recon: Planes = np.empty_like(current)
    codes[0], recon[1] = g_codes[0], g[0]
    for y in range(0, current.shape[1], DEQUANTIZE_BAND_ROWS):
        rows = slice(y, y + DEQUANTIZE_BAND_ROWS)
        wide_g = g[0, rows].astype(np.int16)
        b, r = _follow_g(current, wide_g, rows)
        codes[1, rows] = (b - wide_g + 128) & 0xFF
        codes[2, rows] = (r - wide_g + 128) & 0xFF
        recon[0, rows], recon[2, rows] = b, r
    return codes, recon


def dequantize_g(codes: Planes, tolerance: int) -> Planes:
    recon: Planes = np.empty_like(codes)
    recon[1] = dequantize(codes[0:1], tolerance)[0]
    np.add(codes[1], recon[1], out=recon[0], dtype=np.uint8)
    np.add(codes[2], recon[1], out=recon[2], dtype=np.uint8)
    recon[0] -= np.uint8(128)
    recon[2] -= np.uint8(128)
    return recon


# --- colour ------------------------------------------------------------------------------------------------


def rct(planes: Planes) -> Planes:
    """(B, G, R) → (G, B−G+128, R−G+128) mod 256: decorrelates colour, exactly reversible.

    The +128 keeps grey-ish chroma away from the 0/255 wrap, so the spatial predictor sees smooth planes.
    """
    b, g, r = planes
    out = np.empty_like(planes)
    out[0] = g
    np.subtract(b, g, out=out[1], dtype=np.uint8)
    np.subtract(r, g, out=out[2], dtype=np.uint8)
    out[1:] += np.uint8(128)
    return out


def unrct(planes: Planes, *, in_place: bool = False) -> Planes:
    """Inverse of :func:`rct`; ``in_place`` reuses ``planes`` (which must be writable) and one spare plane."""
    if not in_place:
        planes = planes.copy()
    g = planes[0].copy()
    planes[0] = planes[1]
    planes[1] = g
    # planes now hold (Cb, G, Cr): B = Cb + G − 128, R = Cr + G − 128, all mod 256
    np.add(planes[0], g, out=planes[0], dtype=np.uint8)
    np.add(planes[2], g, out=planes[2], dtype=np.uint8)
    planes[0] -= np.uint8(128)
    planes[2] -= np.uint8(128)
    return planes


# --- 2×2 chroma blocks (BLOCK_CHROMA) ------------------------------------------------------------------------
# Decoded 4:2:0 video carries one chroma sample per aligned 2×2 block, and the YUV→BGR conversion adds it to
# every luma sample of the block alike, so B−G and R−G are constant over the block: measured on the public
# videos, 93 % (PETS) to 99.8 % (the motorway clip) of aligned blocks, against 18-60 % of blocks offset by one
# pixel. MED predicts the three later samples of a constant block exactly, but they still cost bits in the
# busy contexts of the first; laid out by block they become planes of zeros, one group flag per 16.


def _block_shape(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the top-left quadrant: one per 2×2 block, a part block at an odd edge included."""
    return (height + 1) // 2, (width + 1) // 2


def block_chroma(planes: Planes) -> Planes:
    """BLOCK_CHROMA: planes 1 and 2 (RCT's chroma, centred on 128) laid out by 2×2 block; plane 0 as it is.

    Each block's top-left sample v00 goes to the top-left quadrant as v00 − 128, so that chroma which does not
    change (128) is 0 like everything else in the plane; the top-right quadrant holds v01 − v00, the
    bottom-left v10 − v00 and the bottom-right v11 − v00, all mod 256 (``docs/wire-format.md``). Compiled
    when available (0.49 → 0.05 ms a 768×576 frame).
    """
    if native.AVAILABLE:
        return native.blocks(planes, inverse=False)
    return block_chroma_numpy(planes)


def unblock_chroma(planes: Planes) -> Planes:
    """Inverse of :func:`block_chroma`."""
    if native.AVAILABLE:
        return native.blocks(planes, inverse=True)
    return unblock_chroma_numpy(planes)


def block_chroma_numpy(planes: Planes) -> Planes:
    """:func:`block_chroma` with numpy's strided views: the fallback, and the compiled one's reference."""
    _, height, width = planes.shape
    hh, wh = _block_shape(height, width)
    out = np.empty_like(planes)
    out[0] = planes[0]
    src, dst = planes[1:], out[1:]
    top = src[:, 0::2, 0::2]
    np.subtract(top, np.uint8(128), out=dst[:, :hh, :wh], dtype=np.uint8)
    np.subtract(src[:, 0::2, 1::2], top[:, :, : width // 2], out=dst[:, :hh, wh:], dtype=np.uint8)
    np.subtract(src[:, 1::2, 0::2], top[:, : height // 2], out=dst[:, hh:, :wh], dtype=np.uint8)
    np.subtract(src[:, 1::2, 1::2], top[:, : height // 2, : width // 2], out=dst[:, hh:, wh:], dtype=np.uint8)
    return out


def unblock_chroma_numpy(planes: Planes) -> Planes:
    """:func:`unblock_chroma` with numpy."""
    _, height, width = planes.shape
    hh, wh = _block_shape(height, width)
    out = np.empty_like(planes)
    out[0] = planes[0]
    src, dst = planes[1:], out[1:]
    top = np.add(src[:, :hh, :wh], np.uint8(128), dtype=np.uint8)
    dst[:, 0::2, 0::2] = top
    np.add(src[:, :hh, wh:], top[:, :, : width // 2], out=dst[:, 0::2, 1::2], dtype=np.uint8)
    np.add(src[:, hh:, :wh], top[:, : height // 2], out=dst[:, 1::2, 0::2], dtype=np.uint8)
    np.add(src[:, hh:, wh:], top[:, : height // 2, : width // 2], out=dst[:, 1::2, 1::2], dtype=np.uint8)
    return out


def med_blocks(planes: Planes, signed: tuple[bool, ...], *, luma: bool) -> Planes:
    """MED after BLOCK_CHROMA: on the top-left quadrant of planes 1 and 2 as a plane of its own (the block's
    chroma at a quarter of the samples), and on plane 0 too when ``luma`` (MED rather than MED_CHROMA).

    The quadrant holds v00 − 128 and is predicted as a signed plane, on its bytes XOR 0x80: exactly MED of the
    top-left samples themselves. The other quadrants, mostly zeros, are left as they are.
    """
    _, height, width = planes.shape
    hh, wh = _block_shape(height, width)
    out = planes.copy()
    if luma:
        out[:1] = med(planes[:1], signed[:1])
    out[1:, :hh, :wh] = med(np.ascontiguousarray(planes[1:, :hh, :wh]), (True, True))
    return out


def unmed_blocks(res: Planes, signed: tuple[bool, ...], *, luma: bool) -> Planes:
    """Inverse of :func:`med_blocks`."""
    _, height, width = res.shape
    hh, wh = _block_shape(height, width)
    out = res.copy()
    if luma:
        out[:1] = unmed(res[:1], signed[:1])
    out[1:, :hh, :wh] = unmed(np.ascontiguousarray(res[1:, :hh, :wh]), (True, True))
    return out


# --- JPEG stills (JPEG_CHROMA) ------------------------------------------------------------------------------
# The encoder is compiled only (``native.jpeg``): it searches for the quarter planes, which numpy cannot do at a
# useful speed. The decoder has a numpy fallback, so that any install reads the records. MED after the stage
# predicts the planes that are images (G and the quarter planes).

_JPEG_IMAGES = [0, 3]
_J = np.arange(256, dtype=np.int32) - 128
_JCR_R = (91881 * _J + 32768) >> 16
_JCB_B = (116130 * _J + 32768) >> 16
_JCR_G = -46802 * _J
_JCB_G = -22554 * _J + 32768
"""JFIF's YCbCr → RGB in libjpeg's 16-bit fixed point (``docs/wire-format.md``)."""


def _fancy_up(quarter: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """libjpeg's h2v2 "fancy" upsampling of a quarter-size plane, as ``docs/wire-format.md`` gives it."""
    q = quarter.astype(np.int32)
    h2, w2 = q.shape
    out = np.empty((2 * h2, 2 * w2), dtype=np.int32)
    for dy, beside in ((0, np.vstack([q[:1], q[:-1]])), (1, np.vstack([q[1:], q[-1:]]))):
        near = 3 * q + beside
        left = np.hstack([near[:, :1], near[:, :-1]])
        right = np.hstack([near[:, 1:], near[:, -1:]])
        out[dy::2, 0::2] = (3 * near + left + 8) >> 4
        out[dy::2, 1::2] = (3 * near + right + 7) >> 4
    return out


def jpeg_inverse(coded: Planes) -> Planes:
    """JPEG_CHROMA's inverse: (G, B − B̂, R − R̂, Q) → (B, G, R); compiled when available (2 ms a 1080p
    still), else numpy."""
    if native.AVAILABLE:
        return native.jpeg(coded, inverse=True)
    return jpeg_inverse_numpy(coded)


def jpeg_inverse_numpy(coded: Planes) -> Planes:
    """:func:`jpeg_inverse` with numpy: the fallback, and the compiled one's reference."""
    _, height, width = coded.shape
    if coded.shape[0] != 4 or height % 2 or width % 2:
        raise WireFormatError(f"JPEG_CHROMA: needs 4 planes of an even height and width, got {coded.shape}")
    h2, w2 = height // 2, width // 2
    cb, cr = _fancy_up(coded[3, :h2, :w2]), _fancy_up(coded[3, :h2, w2:])
    g = coded[0].astype(np.int32)
    y = g - ((_JCB_G[cb] + _JCR_G[cr]) >> 16)
    out = np.empty((3, height, width), dtype=np.uint8)
    out[0] = (np.clip(y + _JCB_B[cb], 0, 255) + coded[1]) & 0xFF
    out[1] = coded[0]
    out[2] = (np.clip(y + _JCR_R[cr], 0, 255) + coded[2]) & 0xFF
    return out


def med_jpeg(planes: Planes) -> Planes:
    """MED after JPEG_CHROMA: on plane 0 (G) and plane 3 (the quarter chroma planes), as unsigned planes."""
    out = np.empty_like(planes)
    out[1:3] = planes[1:3]
    for k in _JPEG_IMAGES:  # one plane at a time: no two-plane temporaries at 1080p
        out[k] = med(planes[k : k + 1], (False,))[0]
    return out


def unmed_jpeg(res: Planes) -> Planes:
    """Inverse of :func:`med_jpeg`."""
    out = np.empty_like(res)
    out[1:3] = res[1:3]
    for k in _JPEG_IMAGES:
        out[k] = unmed(res[k : k + 1], (False,))[0]
    return out


# --- spatial prediction (MED) ------------------------------------------------------------------------------
# MED is translation-equivariant, so a plane of signed values (residuals centred on 0) is predicted on its
# bytes XOR 0x80 (centred on 128) and gives the very same residuals as a signed predictor would.


def _flip(planes: Planes, signed: tuple[bool, ...]) -> Planes:
    if not any(signed):
        return planes
    mask = np.array([0x80 if s else 0 for s in signed], dtype=np.uint8)[:, None, None]
    return np.bitwise_xor(planes, mask)


def med(planes: Planes, signed: tuple[bool, ...]) -> Planes:
    """Median edge detector residual (LOCO-I): pred = clip(a+b−c, min(a,b), max(a,b)), residual mod 256.

    a is the left, b the upper, c the upper-left neighbour; outside the frame they read as 0, so the first
    row predicts from the left and the first column from above. Compiled when available (2× faster).
    """
    if native.AVAILABLE:
        return native.med(planes, signed)
    return med_numpy(planes, signed)


def med_chroma(planes: Planes, signed: tuple[bool, ...]) -> Planes:
    """MED_CHROMA: :func:`med` on planes 1 and 2 only. A quantised G residual is noise-like and codes smaller as
    it is, while the chroma beside it is smooth and codes smaller predicted (PETS at T=2: 11 % smaller than
    MED on all three planes, docs/benchmarks.md)."""
    out = planes.copy()
    out[1:] = med(planes[1:], signed[1:])
    return out


def unmed_chroma(res: Planes, signed: tuple[bool, ...]) -> Planes:
    out = res.copy()
    out[1:] = unmed(res[1:], signed[1:])
    return out


def med_numpy(planes: Planes, signed: tuple[bool, ...]) -> Planes:
    """:func:`med` with numpy and OpenCV: the fallback, and the reference the compiled one is tested against."""
    p = _flip(planes, signed)
    c_, h, w = p.shape
    out = np.empty_like(p)
    padded = np.zeros((h + 1, w + 1), dtype=np.int16)
    for index in range(c_):
        # OpenCV's int16 arithmetic on 2-D views: about 20 % faster than numpy's here, same values
        # (a + b − c stays within −255..510, far from int16 saturation).
        padded[1:, 1:] = p[index]
        a, b, c = padded[1:, :-1], padded[:-1, 1:], padded[:-1, :-1]
        pred = cv2.min(cv2.max(cv2.subtract(cv2.add(a, b), c), cv2.min(a, b)), cv2.max(a, b))
        np.subtract(p[index], pred.astype(np.uint8), out=out[index], dtype=np.uint8)
    return out


def unmed(res: Planes, signed: tuple[bool, ...]) -> Planes:
    """Inverse of :func:`med`: compiled when available (one pass, ~10× faster), else :func:`unmed_numpy`."""
    if native.AVAILABLE:
        return native.unmed(res, signed)
    return unmed_numpy(res, signed)


def unmed_numpy(res: Planes, signed: tuple[bool, ...]) -> Planes:
    """Inverse of :func:`med`, one plane at a time, vectorised along anti-diagonals.

    Every pixel of anti-diagonal d = x + y depends only on diagonals d−1 and d−2, so the plane is skewed
    into rows of diagonals (``skew[d+1, y+1]`` holds pixel (y, x=d−y); index 0 is the zero border) and
    decoded one contiguous diagonal at a time: H+W−1 vector steps instead of H·W scalar ones. One plane at
    a time keeps the int16 working set to a third of the frame's size.
    """
    out = np.empty_like(res)
    for index in range(res.shape[0]):
        out[index] = _unmed_plane(res[index])
    return _flip(out, signed)


def _unmed_plane(res: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    h, w = res.shape
    n_diag = h + w - 1
    skew_res = np.zeros((n_diag, h), dtype=np.uint8)
    for y in range(h):
        skew_res[y : y + w, y] = res[y]
    skew = np.zeros((n_diag + 1, h + 1), dtype=np.int16)
    for d in range(n_diag):
        y0 = max(0, d - w + 1)
        y1 = min(h - 1, d) + 1
        a = skew[d, y0 + 1 : y1 + 1]
        b = skew[d, y0:y1]
        c = skew[d - 1, y0:y1] if d > 0 else skew[0, y0:y1]
        pred = np.minimum(np.maximum(a + b - c, np.minimum(a, b)), np.maximum(a, b))
        skew[d + 1, y0 + 1 : y1 + 1] = (skew_res[d, y0:y1] + pred) & 0xFF
    out = np.empty_like(res)
    for y in range(h):
        out[y] = skew[y + 1 : y + 1 + w, y + 1]
    return out
