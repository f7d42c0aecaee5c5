"""Standard lossless codecs fed the same decoded frames: what a data centre could use instead of ours.

PNG (OpenCV's default level, every frame on its own), FFV1 (intra-only, ``-g 1``) and x264 lossless
(``libx264rgb -qp 0 -preset veryslow``, which also predicts between frames). The ffmpeg codecs run as a
child process fed raw frames over a pipe; their time is the wall time of that process, with ffmpeg's default
threading (it may use every core, where our encoder uses one). Each output is decoded again and compared,
so "lossless" is measured, not assumed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from benchmarks.seed_method import Image, MethodResult

FFMPEG_CODECS: dict[str, list[str]] = {
    "FFV1 (level 3, intra)": ["-c:v", "ffv1", "-level", "3", "-g", "1"],
    "x264 lossless (veryslow)": ["-c:v", "libx264rgb", "-qp", "0", "-preset", "veryslow"],
}


def _max_error(decoded: Iterable[Image], frames: Sequence[Image]) -> int:
    """Largest pixel error over all frames, one frame at a time (holding a second copy of a 1080p set
    would double the peak memory this benchmark reports)."""
    worst = 0
    count = 0
    decoded = iter(decoded)
    for f, d in zip(frames, decoded, strict=False):
        worst = max(worst, int(np.max(np.abs(d.astype(np.int16) - f.astype(np.int16)))))
        count += 1
    extra = sum(1 for _ in decoded)
    if count != len(frames) or extra:
        raise RuntimeError(f"decoded {count + extra} frames, expected {len(frames)}")
    return worst


def run_png(frames: Sequence[Image]) -> MethodResult:
    encoded = 0
    encode_s = 0.0
    blobs = []
    for image in frames:
        start = time.perf_counter()
        ok, blob = cv2.imencode(".png", image)
        encode_s += time.perf_counter() - start
        if not ok:
            raise RuntimeError("cv2.imencode('.png') failed")
        encoded += blob.nbytes
        blobs.append(blob)
    decoded = (np.asarray(cv2.imdecode(b, cv2.IMREAD_UNCHANGED), dtype=np.uint8) for b in blobs)
    return MethodResult(
        method="PNG (cv2 default)",
        frames=len(frames),
        raw_bytes=sum(f.nbytes for f in frames),
        encoded_bytes=encoded,
        encode_s=encode_s,
        max_abs_error=_max_error(decoded, frames),
        keys=len(frames),
    )


def _pix_fmt(image: Image) -> str:
    return "gray" if image.ndim == 2 else "bgr24"


def run_ffmpeg(name: str, frames: Sequence[Image], fps: float = 10.0) -> MethodResult:
    """Encode ``frames`` with one of :data:`FFMPEG_CODECS`; "n/a" in the result when ffmpeg is missing."""
    raw = sum(f.nbytes for f in frames)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or not frames:
        why = "no frames" if frames else "ffmpeg not found"
        return MethodResult(name, len(frames), raw, None, None, None, note=f"n/a: {why}")
    height, width = frames[0].shape[:2]
    codec = FFMPEG_CODECS[name]
    # libx264rgb takes RGB only (and libx264's grey goes through a range conversion): grey goes in as BGR
    grey_as_bgr = frames[0].ndim == 2 and "libx264rgb" in codec
    pix_fmt = "bgr24" if grey_as_bgr else _pix_fmt(frames[0])
    with tempfile.TemporaryDirectory(prefix="cctv-bench-") as tmp:
        out = Path(tmp) / "out.mkv"
        command = [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats", "-y",
            "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-",
            *codec, str(out),
        ]  # fmt: skip
        start = time.perf_counter()
        with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdin is not None
            assert proc.stderr is not None
            try:
                for image in frames:
                    fed = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if grey_as_bgr else image
                    proc.stdin.write(np.ascontiguousarray(fed).data)
            except BrokenPipeError:
                pass
            proc.stdin.close()
            errors = proc.stderr.read().decode(errors="replace").strip()
            rc = proc.wait()
        encode_s = time.perf_counter() - start
        if rc != 0:
            return MethodResult(
                name, len(frames), raw, None, None, None, note=f"n/a: ffmpeg failed: {errors[-200:]}"
            )
        encoded = out.stat().st_size
        decoded = _decode(ffmpeg, out, pix_fmt, width, height)
        max_err = _max_error((d[:, :, 0] for d in decoded) if grey_as_bgr else decoded, frames)
    return MethodResult(
        method=name,
        frames=len(frames),
        raw_bytes=raw,
        encoded_bytes=encoded,
        encode_s=encode_s,
        max_abs_error=max_err,
        note="wall time, ffmpeg default threads",
    )


def _decode(ffmpeg: str, path: Path, pix_fmt: str, width: int, height: int) -> Iterator[Image]:
    shape = (height, width) if pix_fmt == "gray" else (height, width, 3)
    size = int(np.prod(shape))
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(path)]
    command += ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while len(data := proc.stdout.read(size)) == size:
            yield np.frombuffer(data, dtype=np.uint8).reshape(shape)
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not decode {path}")


def run_peers(
    frames: Sequence[Image], fps: float = 10.0, x264_limit: int | None = None
) -> list[MethodResult]:
    """All peers on the same frames; ``x264_limit`` caps the frames given to x264 veryslow (slow on 1080p)."""
    results = [run_png(frames)]
    for name in FFMPEG_CODECS:
        subset = frames
        if name.startswith("x264") and x264_limit is not None and len(frames) > x264_limit:
            subset = frames[:x264_limit]
        result = run_ffmpeg(name, subset, fps)
        if subset is not frames:
            result.note = f"first {len(subset)} frames only; " + result.note
        results.append(result)
    return results
