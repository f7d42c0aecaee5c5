"""Decoded video's YUV 4:2:0 pictures to BGR frames, the same on every machine.

Why not OpenCV's conversion: OpenCV hands out video as BGR converted by FFmpeg's swscale, and swscale's
result depends on the CPU. On x86-64 it adds one luma term to chroma terms computed once per 2×2 block, so
B−G and R−G stay constant over each block, as in the decoded picture; aarch64's NEON code (a Raspberry Pi's)
rounds each channel on its own, and the same video then codes 28–35 % larger (``docs/benchmarks.md``, "A
Raspberry Pi 4"). ``cv2.cvtColor`` rounds each channel on its own too. This module does x86-64's arithmetic in
integers (``_yuv.c``; numpy below when the extension was not built), so a frame is the same bytes wherever it
is converted, and on x86-64 the same bytes OpenCV gives.

The codec's YUV420 stage (``docs/wire-format.md``) codes such a picture instead of the frame converted from it,
and its decoder converts with :func:`to_bgr`: the formula here is normative for that stage, which is why it is
part of the codec (capture imports it from here).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import numpy.typing as npt

_compiled: ModuleType | None
try:
    _compiled = importlib.import_module("agent.codec._yuv")
except ImportError:  # pragma: no cover - exercised only on installs without a C compiler
    _compiled = None

COMPILED = _compiled is not None

# swscale's ITU-R 601 coefficients (16.16 in ff_yuv2rgb_coeffs) in 13 bits, as its x86 code uses them.
_Y, _UB, _UG, _VG, _VR = 9539, 16525, -3209, -6660, 13075


def picture_bytes(width: int, height: int) -> int:
    """Size of one packed yuv420p picture: a full-size Y plane, then U and V at ⌈w/2⌉ × ⌈h/2⌉."""
    return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)


def tall(picture: bytes | bytearray | memoryview, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A packed yuv420p picture of even ``width`` and ``height`` as the YUV420 stage lays it out: one
    ``(1, height * 3 // 2, width)`` plane, Y on top, then ``height // 2`` rows each holding a row of U and the same
    row of V side by side (each chroma sample keeps its neighbours above and below, which MED and CTX use)."""
    if width % 2 or height % 2:
        raise ValueError(f"the YUV420 layout needs an even width and height, got {width} x {height}")
    if len(picture) != picture_bytes(width, height):
        raise ValueError(
            f"a {width} x {height} yuv420p picture is {picture_bytes(width, height)} bytes, got {len(picture)}"
        )
    flat = np.frombuffer(picture, dtype=np.uint8)
    cw, ch, luma = width // 2, height // 2, width * height
    out = np.empty((1, height + ch, width), dtype=np.uint8)
    out[0, :height] = flat[:luma].reshape(height, width)
    out[0, height:, :cw] = flat[luma : luma + cw * ch].reshape(ch, cw)
    out[0, height:, cw:] = flat[luma + cw * ch :].reshape(ch, cw)
    return out


def to_bgr(
    picture: bytes | bytearray | memoryview, width: int, height: int, *, laid_out: bool = False
) -> npt.NDArray[np.uint8]:
    """One packed yuv420p picture (BT.601, limited range) as a new ``(height, width, 3)`` BGR array;
    ``laid_out``: the picture is in :func:`tall`'s layout instead (the same samples, the same frame)."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    if _compiled is not None:
        _compiled.bgr(picture, out.data, width, height, laid_out)
        return out
    if laid_out:
        plane = np.frombuffer(picture, dtype=np.uint8).reshape(-1, width)
        cw = (width + 1) // 2
        chroma = plane[height:]
        packed = np.concatenate([plane[:height].ravel(), chroma[:, :cw].ravel(), chroma[:, cw:].ravel()])
        return to_bgr_numpy(packed.data, width, height, out)
    return to_bgr_numpy(picture, width, height, out)


def to_bgr_numpy(
    picture: bytes | bytearray | memoryview,
    width: int,
    height: int,
    out: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """:func:`to_bgr` in numpy: the same bytes, several times slower (kept for installs without a compiler)."""
    if len(picture) != picture_bytes(width, height):
        raise ValueError(
            f"a {width} x {height} yuv420p picture is {picture_bytes(width, height)} bytes, got {len(picture)}"
        )
    cw, ch = (width + 1) // 2, (height + 1) // 2
    flat = np.frombuffer(picture, dtype=np.uint8)
    y = flat[: width * height].reshape(height, width).astype(np.int32)
    u = flat[width * height : width * height + cw * ch].reshape(ch, cw).astype(np.int32)
    v = flat[width * height + cw * ch :].reshape(ch, cw).astype(np.int32)
    luma = ((y - 16) * 8 * _Y) >> 16
    u8, v8 = (u - 128) * 8, (v - 128) * 8
    terms = ((u8 * _UB) >> 16, ((u8 * _UG) >> 16) + ((v8 * _VG) >> 16), (v8 * _VR) >> 16)
    if out is None:
        out = np.empty((height, width, 3), dtype=np.uint8)
    for channel, term in enumerate(terms):
        full = np.repeat(np.repeat(term, 2, axis=0), 2, axis=1)[:height, :width]
        out[:, :, channel] = np.clip(luma + full, 0, 255)
    return out
