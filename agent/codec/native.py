"""The codec's compiled loops (``agent/codec/_native.c``): the CTX entropy stage, MED and the PackBits encoder.

zstd's Huffman stage cannot spend less than a bit on a byte it does not match, and prediction residuals are
mostly small values scattered among zeros. CTX codes each sample with the histogram of its context (the
activity of its already-coded neighbours) near the entropy: 15-25 % smaller than zstd on the public footage
(``docs/benchmarks.md``). It is C because decoding is one loop over every sample in which each step needs
the one before, which numpy cannot vectorise.

MED is there too because its decoder is one such loop (numpy walks anti-diagonals instead, ~10× slower),
PackBits because numpy's version was most of the zstd path's encode time, the key selector's grey shrink
because OpenCV's takes two passes over every frame (one here, half the time), and its SSIM because OpenCV's
three blurs on a small copy cost more in calls than in arithmetic (the blurs and the formula in one call over
the averaged region: 19.5 against 46 us a 320x240 frame's score, 0.53 against 0.77 ms at 1080p).
``crc_shift`` is zlib's ``crc32_combine`` arithmetic, which Python's zlib does not expose (``agent.codec.crc``).

The byte layout is in ``docs/wire-format.md``. When the extension was not built (no compiler at install
time) :data:`AVAILABLE` is false: the encoder falls back to zstd, and decoding a record that needs the
extension says how to get it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np
import numpy.typing as npt

from agent.errors import WireFormatError

Planes = npt.NDArray[np.uint8]

_native: ModuleType | None
try:
    _native = importlib.import_module("agent.codec._native")
except ImportError:  # pragma: no cover - exercised only on installs without a C compiler
    _native = None

AVAILABLE = _native is not None
HOW_TO_GET = (
    "reinstall cctv-agent where a C compiler and the Python headers are present (Debian: gcc python3-dev)"
)
MISSING = f"this record needs the compiled module agent.codec._native, which this install lacks: {HOW_TO_GET}"


def _module() -> ModuleType:
    if _native is None:
        raise WireFormatError(MISSING)
    return _native


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


THREADS = min(4, _cpus())
"""How many planes of a record, or bands of a record's one plane, the extension codes or decodes at once by
default: the CPUs this process may run on (systemd's ``CPUAffinity=`` lowers it), at most 4 (a record's most
planes, a plane's most bands). Only planes of 2^17 samples or more are, and the bytes are the same either way.
Three colour planes at 1080p are coded 1.5-2x faster on two cores; a decoded video's picture is one plane,
banded from 2^19 samples (:func:`ctx_bands`)."""


def ctx_bands(height: int, width: int) -> int:
    """How many bands :func:`ctx_encode` cuts a plane of ``height`` x ``width`` into: 1 is a plain group plane,
    more a banded one, which only records of wire format version 8 may hold (``RecordHeader.banded_planes``).
    Without the extension there is no CTX to band: 1."""
    return int(_native.bands(height, width)) if _native is not None else 1


def ctx_encode(planes: Planes, threads: int | None = None) -> bytes:
    """Code a ``(C, H, W)`` uint8 array; at most ``C·H·W + 2·C`` bytes (a plane that would grow is stored).
    ``threads``: planes, or one plane's bands (:func:`ctx_bands`), coded at once (default :data:`THREADS`)."""
    channels, height, width = planes.shape
    out: bytes = _module().encode(
        np.ascontiguousarray(planes).data, channels, height, width, THREADS if threads is None else threads
    )
    return out


def ctx_cost(planes: Planes, threads: int | None = None) -> float:
    """The bytes :func:`ctx_encode` would return, within a few, at about half its time (no coding pass)."""
    channels, height, width = planes.shape
    cost: float = _module().cost(
        np.ascontiguousarray(planes).data, channels, height, width, THREADS if threads is None else threads
    )
    return cost


def ctx_decode(
    payload: bytes | memoryview,
    channels: int,
    height: int,
    width: int,
    *,
    group_planes: bool = True,
    banded_planes: bool = True,
    unmed: tuple[bool | None, ...] | None = None,
    threads: int | None = None,
) -> Planes:
    """Inverse of :func:`ctx_encode`; allocates exactly ``C·H·W`` bytes whatever the payload says.

    ``group_planes``: the payload may hold group planes (records of wire format version 4 on); in an older
    record the same byte is a corrupted table count, and is refused as one. ``banded_planes``: it may hold
    banded ones (version 8 on); before, the same bits are a corrupted plane kind. ``unmed``: for each plane, whether
    it holds signed MED residuals (as for :func:`unmed`), or None for a plane MED did not predict; the planes
    come back with MED undone too, in the same pass (what ``unmed(ctx_decode(...))`` gives, 1.15-1.28x faster).
    ``threads``: planes, or a plane's bands, decoded at once (default :data:`THREADS`; bands only where MED
    is not undone with them: a band's first row needs the band above it).
    """
    flips = None if unmed is None else bytes(0 if s is None else 0x80 if s else 0x01 for s in unmed)
    try:
        raw: bytes = _module().decode(
            payload,
            channels,
            height,
            width,
            group_planes,
            flips,
            THREADS if threads is None else threads,
            banded_planes,
        )
    except ValueError as e:
        raise WireFormatError(str(e)) from e
    return np.frombuffer(raw, dtype=np.uint8).reshape(channels, height, width)


def med(planes: Planes, signed: tuple[bool, ...]) -> Planes:
    """The MED stage's residuals (``transforms.med`` says what they are)."""
    return _med_call("med", planes, signed)


def unmed(residuals: Planes, signed: tuple[bool, ...]) -> Planes:
    """Inverse of :func:`med`: one sequential pass, about ten times faster than numpy's anti-diagonals."""
    return _med_call("unmed", residuals, signed)


def _med_call(name: str, planes: Planes, signed: tuple[bool, ...]) -> Planes:
    out: bytes = getattr(_module(), name)(np.ascontiguousarray(planes).data, bytes(signed), *planes.shape)
    return np.frombuffer(out, dtype=np.uint8).reshape(planes.shape)


def pixels(
    planes: Planes,
    reference: Planes | None,
    *,
    rct: bool,
    med: tuple[bool, ...],
    signed: tuple[bool, ...],
    tolerance: int = 0,
    follow_g: bool = False,
) -> tuple[Planes, Planes | None]:
    """Residual against ``reference`` (if any), then RCT, then MED on the planes ``med`` names, in one pass.

    With a ``tolerance`` the residual is the quantised one (``transforms.quantize_residual``), or without a
    reference the values are quantised (``transforms.quantize``); with ``follow_g`` too only G is, and B and R
    follow it (``transforms.quantize_residual_g``, ``transforms.quantize_g``). Returns the coded planes and the
    reconstruction, None for it when nothing was quantised (the reconstruction is ``planes``).
    """
    if reference is not None and reference.shape != planes.shape:
        raise ValueError(f"reference is {reference.shape}, planes are {planes.shape}")
    ref = None if reference is None else np.ascontiguousarray(reference).data
    out, recon = _module().pixels(
        np.ascontiguousarray(planes).data,
        ref,
        rct,
        follow_g,
        bytes(med),
        bytes(signed),
        tolerance,
        *planes.shape,
    )
    coded = np.frombuffer(out, dtype=np.uint8).reshape(planes.shape)
    if recon is None:
        return coded, None
    return coded, np.frombuffer(recon, dtype=np.uint8).reshape(planes.shape)


def luma(samples: Planes, reference: Planes | None, step: int, tolerance: int) -> tuple[Planes, Planes]:
    """``transforms.quantize_luma`` compiled: the same bytes, one pass."""
    ref = None if reference is None else np.ascontiguousarray(reference).data
    codes, recon = _module().luma(np.ascontiguousarray(samples).data, ref, step, tolerance)
    return (
        np.frombuffer(codes, dtype=np.uint8).reshape(samples.shape),
        np.frombuffer(recon, dtype=np.uint8).reshape(samples.shape),
    )


def blocks(planes: Planes, *, inverse: bool) -> Planes:
    """``transforms.block_chroma`` (or with ``inverse`` its inverse), compiled: the same bytes."""
    out: bytes = _module().blocks(np.ascontiguousarray(planes).data, *planes.shape, inverse)
    return np.frombuffer(out, dtype=np.uint8).reshape(planes.shape)


def jpeg(planes: Planes, *, inverse: bool) -> Planes:
    """JPEG_CHROMA (``docs/wire-format.md``): (B, G, R) planes → (G, B − B̂, R − R̂, quarter planes), where B̂ and R̂
    are JFIF's conversion of the quarter planes upsampled as libjpeg does, recovered from the pixels; with
    ``inverse`` the four planes back to (B, G, R). Height and width must be even."""
    channels, height, width = planes.shape
    if channels != (4 if inverse else 3):
        raise ValueError(f"JPEG_CHROMA takes {4 if inverse else 3} planes, got {channels}")
    try:
        out: bytes = _module().jpeg(np.ascontiguousarray(planes).data, height, width, inverse)
    except ValueError as e:
        raise WireFormatError(str(e)) from e
    return np.frombuffer(out, dtype=np.uint8).reshape((3 if inverse else 4), height, width)


def packbits(data: npt.NDArray[np.uint8], row_bytes: int) -> bytes:
    """``agent.codec.packbits.encode_rows``, compiled: the same bytes, about 15× faster."""
    out: bytes = _module().packbits(np.ascontiguousarray(data).data, row_bytes)
    return out


def crc_shift(crc: int, nbytes: int) -> int:
    """zlib's CRC-32 ``crc`` of a prefix carried past ``nbytes`` more bytes (:func:`agent.codec.crc.crc_shift`)."""
    out: int = _module().crc_shift(crc, nbytes)
    return out


def grey_shrink(
    image: npt.NDArray[np.uint8], factor: int, offset: float = 0.0, scale: float = 1.0
) -> npt.NDArray[np.float32]:
    """The mean grey (0.114 B + 0.587 G + 0.299 R) of every ``factor``² block of an (H, W, 3) BGR or (H, W) grey
    image, as an (H // factor, W // factor) float32 array: the key selector's SSIM copy in one pass. Each value v
    is given as ``(v - offset) * scale`` in float32, as numpy would compute it (a picture's Y to grey)."""
    image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    out: bytes = _module().grey_shrink(image.data, height, width, channels, factor, offset, scale)
    return np.frombuffer(out, dtype=np.float32).reshape(height // factor, width // factor)


def ssim_key(grey: npt.NDArray[np.float32], kernel: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The key's SSIM maps (μ_a, μ_a², σ_a²) over the region skimage averages, as one (3, H - taps + 1,
    W - taps + 1) float32 array: ``agent.codec.ssim``'s blurs, computed where the window lies inside only."""
    height, width = grey.shape
    out: bytes = _module().ssim_key(
        np.ascontiguousarray(grey, dtype=np.float32).data, kernel.data, height, width
    )
    taps = len(kernel)
    return np.frombuffer(out, dtype=np.float32).reshape(3, height - taps + 1, width - taps + 1)


def ssim_score(
    key: npt.NDArray[np.float32],
    key_maps: npt.NDArray[np.float32],
    grey: npt.NDArray[np.float32],
    kernel: npt.NDArray[np.float32],
    c1: float,
    c2: float,
) -> float:
    """The mean SSIM of ``grey`` to ``key`` (whose maps :func:`ssim_key` made): the frame's three blurs and the
    formula in one pass over the region skimage averages."""
    height, width = key.shape
    buffers = [np.ascontiguousarray(m, dtype=np.float32).data for m in (key, grey, key_maps)]
    mean: float = _module().ssim_score(*buffers, kernel.data, height, width, c1, c2)
    return mean
