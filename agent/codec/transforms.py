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


def _step(tolerance: int) -> int:
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


def dequantize_residual(codes: Planes, reference: Planes, tolerance: int) -> Planes:
    step = _step(tolerance)
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


def dequantize(codes: Planes, tolerance: int) -> Planes:
    step = _step(tolerance)
    return _lookup(np.minimum(np.arange(256) * step, 255).astype(np.uint8), codes)


def _lookup(table: npt.NDArray[np.uint8], planes: Planes) -> Planes:
    """``table[planes]`` through OpenCV's LUT (numpy's indexing would first widen every byte to an int64)."""
    flat = np.ascontiguousarray(planes).reshape(-1, planes.shape[-1])
    return np.asarray(cv2.LUT(flat, table), dtype=np.uint8).reshape(planes.shape)


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
