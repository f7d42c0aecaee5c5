"""The YUV 4:2:0 → BGR conversion: the compiled and numpy paths agree, the values are BT.601's, each 2×2 block
keeps one chroma, and on x86-64 the frames are OpenCV's to the bit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.capture import ffmpeg
from agent.codec import yuv

needs_ffmpeg = pytest.mark.skipif(not ffmpeg.available(), reason="ffmpeg and ffprobe are not installed")


def _picture(rng: np.random.Generator, width: int, height: int) -> bytes:
    return rng.integers(0, 256, yuv.picture_bytes(width, height), dtype=np.uint8).tobytes()


@pytest.mark.skipif(not yuv.COMPILED, reason="agent.codec._yuv was not built")
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 67), st.integers(1, 41), st.integers(0, 2**32 - 1))
def test_compiled_and_numpy_give_the_same_bytes(width: int, height: int, seed: int) -> None:
    picture = _picture(np.random.default_rng(seed), width, height)
    np.testing.assert_array_equal(
        yuv.to_bgr(picture, width, height), yuv.to_bgr_numpy(picture, width, height)
    )


def test_values_are_bt601_limited_range_less_three_floors() -> None:
    """Against the exact formula (ITU-R BT.601, 16..235 luma, 16..240 chroma), before clamping both: every
    third luma level with every fifth (U, V) pair, each triple filling one 2×2 block. swscale's arithmetic
    floors each of its products (G sums three), so a value lies up to 3 below the formula, never above it by
    more than the coefficients' rounding; a wrong coefficient would be tens of levels off."""
    y, u, v = np.meshgrid(np.arange(0, 256, 3), np.arange(0, 256, 5), np.arange(0, 256, 5), indexing="ij")
    cw = 256
    ch = -(-y.size // cw)
    ys, us, vs = (np.resize(a.ravel(), ch * cw).reshape(ch, cw).astype(np.uint8) for a in (y, u, v))
    luma = np.repeat(np.repeat(ys, 2, axis=0), 2, axis=1)
    got = yuv.to_bgr(luma.tobytes() + us.tobytes() + vs.tobytes(), 2 * cw, 2 * ch)[::2, ::2].astype(float)
    yf, uf, vf = (ys - 16.0) * 255 / 219, (us - 128.0) * 255 / 224, (vs - 128.0) * 255 / 224
    want = np.stack([yf + 1.772 * uf, yf - 0.344136 * uf - 0.714136 * vf, yf + 1.402 * vf], axis=2)
    error = got - np.clip(want, 0, 255)
    assert error.min() > -3
    assert error.max() < 0.5
    assert tuple(yuv.to_bgr(bytes([16, 128, 128]), 1, 1)[0, 0]) == (0, 0, 0)
    assert tuple(yuv.to_bgr(bytes([235, 128, 128]), 1, 1)[0, 0]) == (255, 255, 255)


def test_each_2x2_block_keeps_one_chroma() -> None:
    """Where no channel is clamped, B−G and R−G are the same at the four pixels of a block: what the codec's
    BLOCK_CHROMA stage finds in decoded video, and what a per-channel rounding (aarch64's swscale) breaks."""
    rng = np.random.default_rng(7)
    width, height = 64, 48
    luma = rng.integers(70, 170, (height, width), dtype=np.uint8)
    chroma = rng.integers(112, 144, 2 * (width // 2) * (height // 2), dtype=np.uint8)
    bgr = yuv.to_bgr(luma.tobytes() + chroma.tobytes(), width, height).astype(np.int16)
    clamped = ((bgr == 0) | (bgr == 255)).any(axis=2)
    assert not clamped.any()
    for diff in (bgr[:, :, 0] - bgr[:, :, 1], bgr[:, :, 2] - bgr[:, :, 1]):
        blocks = diff.reshape(height // 2, 2, width // 2, 2)
        assert (blocks == blocks[:, :1, :, :1]).all()
    # OpenCV's own conversion of the same picture rounds each channel alone, and so does not keep it.
    planes = np.frombuffer(luma.tobytes() + chroma.tobytes(), np.uint8).reshape(height * 3 // 2, width)
    theirs = cv2.cvtColor(planes, cv2.COLOR_YUV2BGR_I420).astype(np.int16)
    d = (theirs[:, :, 0] - theirs[:, :, 1]).reshape(height // 2, 2, width // 2, 2)
    assert not (d == d[:, :1, :, :1]).all()


@pytest.mark.parametrize(("width", "height", "size"), [(0, 4, 4), (4, 4, 23), (4, 4, 25)])
def test_wrong_sizes_are_refused(width: int, height: int, size: int) -> None:
    with pytest.raises(ValueError, match=r"out of range|bytes"):
        yuv.to_bgr(bytes(size), width, height)
    if width:
        with pytest.raises(ValueError, match="bytes"):
            yuv.to_bgr_numpy(bytes(size), width, height)


@needs_ffmpeg
@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"),
    reason="OpenCV's conversion is swscale's x86-64 code only on x86-64 (elsewhere it rounds differently)",
)
def test_the_frames_are_opencvs_on_x86_64(pets_cut: Path, tmp_path: Path) -> None:
    """A clip coded losslessly as yuv420p (FFV1, so every FFmpeg decodes the same planes), decoded by an ffmpeg
    child and converted here: every frame equals OpenCV's ``VideoCapture`` frame, to the bit. (Lossy codecs
    may decode a few samples apart between FFmpeg versions -- the PETS clip's MS-MPEG-4 does -- which is the
    decoder's business, not the conversion's.)"""
    clip = tmp_path / "yuv420p.mkv"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(pets_cut), "-frames:v", "12", "-c:v", "ffv1",
         "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    capture = ffmpeg.open_capture(str(clip), [], 30.0, "test")
    theirs = cv2.VideoCapture(str(clip))
    try:
        count = 0
        while True:
            ok, ours = capture.read()
            ok_theirs, want = theirs.read()
            assert ok == ok_theirs
            if not ok:
                break
            np.testing.assert_array_equal(ours, want)
            count += 1
        assert count == 12
    finally:
        capture.release()
        theirs.release()
