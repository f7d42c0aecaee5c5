"""Run a record's stage list forwards (encoder) or backwards (decoder).

The stage list is the whole recipe: a decoder needs no configuration, only the reference frame when a
residual stage is listed. Byte stages see the planes serialised plane by plane, row by row, so PackBits
packs rows of ``width`` bytes and its output is a valid TIFF strip of a ``width × (C·height)`` grey image.
"""

from __future__ import annotations

import functools
import io
import threading
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import zstandard

from agent.codec import native, packbits, transforms, yuv
from agent.codec.transforms import Planes
from agent.codec.wire import (
    LUMA_QUANTISERS,
    QUANTISING_STAGES,
    REFERENCE_STAGES,
    RecordHeader,
    Stage,
    luma_step,
)
from agent.errors import WireFormatError

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level: zstd contexts are costly to make and not thread-safe."""
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        if level == 1:
            # Residual bytes have few long matches: a small window and hash table, and matches of 7 bytes or
            # more only, measured 10 % faster and 0.8 % smaller than zstd's own level 1 on the public sets.
            params = zstandard.ZstdCompressionParameters(
                window_log=17,
                hash_log=12,
                chain_log=12,
                search_log=1,
                min_match=7,
                target_length=0,
                strategy=zstandard.STRATEGY_FAST,
                write_content_size=True,
                write_checksum=False,
            )
            cache[level] = zstandard.ZstdCompressor(compression_params=params)
        else:
            cache[level] = zstandard.ZstdCompressor(
                level=level, write_content_size=True, write_checksum=False
            )
    return cache[level]


def signedness(stages: tuple[Stage, ...], channels: int) -> tuple[bool, ...]:
    """Which planes hold signed values (residuals) by the time the spatial predictor sees them."""
    if not any(s in REFERENCE_STAGES for s in stages):
        return (False,) * channels
    if Stage.RCT in stages or Stage.RESIDUAL_QG in stages:
        return (True,) + (False,) * (channels - 1)  # RCT (or RESIDUAL_QG's) re-centres the chroma on 128
    return (True,) * channels


BAND_ROWS = 64
"""Pixel stages run over bands of this many rows, so their int16 temporaries stay small (RSS on a Pi)."""


def _pixel_band(
    planes: Planes,
    stages: tuple[Stage, ...],
    reference: Planes | None,
    tolerance: int,
    signed: tuple[bool, ...],
    rows: slice,
) -> tuple[Planes, Planes | None]:
    """Pixel stages for one band of rows; returns (coded band, reconstructed band or None when exact).

    MED needs the row above the band, so the band is computed with one extra row on top and that row's
    output is dropped (MED for row y reads only rows y and y−1).
    """
    spatial = Stage.MED in stages or Stage.MED_CHROMA in stages
    top = rows.start - 1 if rows.start > 0 and spatial else rows.start
    window = slice(top, rows.stop)
    data = planes[:, window]
    recon: Planes | None = None
    for stage in stages:
        if stage is Stage.RESIDUAL:
            assert reference is not None
            data = transforms.residual(data, reference[:, window])
        elif stage is Stage.RESIDUAL_Q:
            assert reference is not None
            data, recon = transforms.quantize_residual(data, reference[:, window], tolerance)
        elif stage is Stage.QUANTIZE:
            data, recon = transforms.quantize(data, tolerance)
        elif stage is Stage.RESIDUAL_QG:
            assert reference is not None
            data, recon = transforms.quantize_residual_g(data, reference[:, window], tolerance)
        elif stage is Stage.QUANTIZE_G:
            data, recon = transforms.quantize_g(data, tolerance)
        elif stage is Stage.RCT:
            data = transforms.rct(data)
        elif stage is Stage.MED:
            data = transforms.med(data, signed)
        elif stage is Stage.MED_CHROMA:
            data = transforms.med_chroma(data, signed)
    skip = rows.start - top
    return data[:, skip:], None if recon is None else recon[:, skip:]


_FIRST_STAGES = (Stage.RESIDUAL, Stage.RESIDUAL_Q, Stage.QUANTIZE, Stage.RESIDUAL_QG, Stage.QUANTIZE_G)
_FUSED_PIXEL_STAGES = (*_FIRST_STAGES, Stage.RCT, Stage.MED, Stage.MED_CHROMA)
"""The pixel stages the compiled ``native.pixels`` runs in one pass, in its one order, each optional (at most one
of the first five: they are the wire format's mutually exclusive first stages; at most one MED)."""
_BYTE_STAGES = frozenset({Stage.PACKBITS, Stage.ZSTD, Stage.CTX})
_LAYOUT_STAGES = frozenset({Stage.YUV420})
"""Stages that name what the planes are rather than transform them: the encoder is handed YUV420's plane as it is
coded (``agent.codec.yuv.tall``), and the decoder converts it to the frame (:func:`image_of`)."""


def pixel_stages(
    planes: Planes,
    stages: tuple[Stage, ...],
    *,
    reference: Planes | None = None,
    tolerance: int = 0,
) -> tuple[Planes, Planes]:
    """The pixel stages of ``stages`` (all but the byte stages); returns their output and the reconstruction."""
    channels, height, _width = planes.shape
    plan = _plan(stages, channels, tolerance >= 1)
    signed, quantising, pixel = plan.signed, plan.quantising, plan.pixel
    if plan.luma:
        return _luma_quantised(planes, pixel, reference, tolerance, signed)
    if Stage.JPEG_CHROMA in pixel:
        # Four planes out of three: G, the residuals of B and R, the quarter chroma planes (native.jpeg); MED
        # predicts G and the quarter planes, the residuals are mostly zeros. After QUANTIZE_G the stage codes
        # the reconstruction (B and R moved with G), and plane 0 holds G's codes instead of G.
        moved = planes
        if Stage.QUANTIZE_G in pixel:
            g_codes, moved = pixel_stages(planes, (Stage.QUANTIZE_G,), tolerance=tolerance)
            coded = np.concatenate([g_codes[:1], native.jpeg(moved, inverse=False)[1:]])
        else:
            coded = native.jpeg(planes, inverse=False)
        if Stage.MED in pixel:
            coded = transforms.med_jpeg(coded)
        return coded, moved
    if Stage.BLOCK_CHROMA in pixel:
        # The layout moves samples across rows, so it runs on the whole frame after the stages before it, and
        # MED after it predicts the laid-out planes (transforms.med_blocks).
        before, rebuilt = pixel_stages(
            planes, pixel[: pixel.index(Stage.BLOCK_CHROMA)], reference=reference, tolerance=tolerance
        )
        laid = transforms.block_chroma(before)
        if Stage.MED in pixel or Stage.MED_CHROMA in pixel:
            laid = transforms.med_blocks(laid, signed, luma=Stage.MED in pixel)
        return laid, rebuilt
    if native.AVAILABLE and pixel and plan.fusable:
        data, recon = native.pixels(
            planes,
            reference if plan.residual else None,
            rct=Stage.RCT in pixel,
            med=plan.med,
            signed=signed,
            tolerance=tolerance if quantising else 0,
            follow_g=plan.follow,
        )
        return data, planes if recon is None else recon
    data = np.empty_like(planes)
    recon = np.empty_like(planes) if quantising else planes
    for y in range(0, height, BAND_ROWS):
        rows = slice(y, min(height, y + BAND_ROWS))
        band, recon_band = _pixel_band(planes, stages, reference, tolerance, signed, rows)
        data[:, rows] = band
        if recon_band is not None:
            recon[:, rows] = recon_band
    return data, recon


class _Plan(NamedTuple):
    """What :func:`pixel_stages` makes of a stage list, worked out once per list (several calls a frame)."""

    signed: tuple[bool, ...]
    quantising: bool
    pixel: tuple[Stage, ...]
    """The stages that transform pixels: all but the byte and layout stages."""
    luma: bool
    fusable: bool
    """``native.pixels`` runs them in one pass."""
    residual: bool
    follow: bool
    med: tuple[bool, ...]
    """Which planes ``native.pixels`` predicts with MED."""


@functools.lru_cache(maxsize=256)
def _plan(stages: tuple[Stage, ...], channels: int, tolerant: bool) -> _Plan:
    pixel = tuple(s for s in stages if s not in _BYTE_STAGES and s not in _LAYOUT_STAGES)
    first = [s for s in pixel if s in _FIRST_STAGES]
    follow = Stage.RESIDUAL_QG in pixel or Stage.QUANTIZE_G in pixel
    fusable = (
        pixel == tuple(s for s in _FUSED_PIXEL_STAGES if s in pixel)
        and len(first) <= 1
        and not (Stage.MED in pixel and Stage.MED_CHROMA in pixel)
        and not (follow and (channels != 3 or Stage.RCT in pixel or not tolerant))
    )
    return _Plan(
        signed=signedness(stages, channels),
        quantising=any(s in QUANTISING_STAGES for s in stages),
        pixel=pixel,
        luma=any(s in LUMA_QUANTISERS for s in pixel),
        fusable=fusable,
        residual=any(s in REFERENCE_STAGES for s in pixel),
        follow=follow,
        med=tuple(Stage.MED in pixel or (Stage.MED_CHROMA in pixel and k > 0) for k in range(channels)),
    )


def _luma_quantised(
    plane: Planes,
    pixel: tuple[Stage, ...],
    reference: Planes | None,
    tolerance: int,
    signed: tuple[bool, ...],
) -> tuple[Planes, Planes]:
    """QUANTIZE_Y or RESIDUAL_QY on YUV420's plane: its Y rows (the top two thirds) on the lattice of
    ``luma_step``'s step, each sample at a point whose luma term is within T of its own; its chroma rows as they
    are or through RESIDUAL; then MED, if listed, over the whole plane. Returns the coded plane and the
    reconstructed picture."""
    rows, step = plane.shape[1] * 2 // 3, luma_step(tolerance)
    quantise = native.luma if native.AVAILABLE else transforms.quantize_luma
    if Stage.RESIDUAL_QY in pixel:
        assert reference is not None
        codes, luma = quantise(plane[:, :rows], reference[:, :rows], step, tolerance)
        chroma, _ = pixel_stages(plane[:, rows:], (Stage.RESIDUAL,), reference=reference[:, rows:])
    else:
        codes, luma = quantise(plane[:, :rows], None, step, tolerance)
        chroma = plane[:, rows:]
    coded = np.concatenate([codes, chroma], axis=1)
    if Stage.MED in pixel:
        coded = transforms.med(coded, signed)
    return coded, np.concatenate([luma, plane[:, rows:]], axis=1)


def encode_planes(
    planes: Planes,
    stages: tuple[Stage, ...],
    *,
    reference: Planes | None = None,
    tolerance: int = 0,
    zstd_level: int = 1,
) -> tuple[bytes, Planes]:
    """Apply ``stages`` to ``planes``; return the payload and what the decoder will reconstruct."""
    data, recon = pixel_stages(planes, stages, reference=reference, tolerance=tolerance)
    if Stage.CTX in stages:
        return native.ctx_encode(data), recon
    width = planes.shape[2]
    # The byte stages run one plane at a time, streaming into zstd.
    compressor = _compressor(zstd_level).compressobj() if Stage.ZSTD in stages else None
    parts: list[bytes] = []
    for index in range(data.shape[0]):
        plane = np.ascontiguousarray(data[index])  # PackBits and zstd read it in place, without a copy
        chunk = packbits.encode_rows(plane, width) if Stage.PACKBITS in stages else plane.data
        parts.append(compressor.compress(chunk) if compressor else bytes(chunk))
    if compressor:
        parts.append(compressor.flush())
    raw = b"".join(parts)
    return raw, recon


def _unzstd(payload: bytes, bound: int) -> bytes:
    """Decompress at most ``bound`` bytes, whatever the frame header claims (it is untrusted)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as reader:
            out = reader.read(bound + 1)
            trailing = reader.read(1) if len(out) <= bound else b""
    except zstandard.ZstdError as e:
        raise WireFormatError(f"zstd stage is corrupted: {e}") from e
    if len(out) > bound or trailing:
        raise WireFormatError(f"zstd stage expands beyond the declared {bound} bytes")
    return out


def held_shape(header: RecordHeader) -> tuple[int, int, int]:
    """The shape of what :func:`decode_planes` returns for this record, which a record referencing it gets back
    as its reference: the frame's (C, H, W) planes, or YUV420's one plane of the picture."""
    if Stage.YUV420 in header.stages:
        return header.coded_shape
    return header.channels, header.height, header.width


def image_of(header: RecordHeader, planes: Planes) -> npt.NDArray[np.uint8]:
    """The frame :func:`decode_planes`' result stands for: ``(H, W, 3)`` BGR or ``(H, W)`` grey."""
    if Stage.YUV420 in header.stages:
        return yuv.to_bgr(np.ascontiguousarray(planes).data, header.width, header.height, laid_out=True)
    return transforms.from_planes(planes)


def decode_planes(header: RecordHeader, payload: bytes, reference: Planes | None = None) -> Planes:
    """Undo ``header.stages`` on ``payload``; raise WireFormatError on anything inconsistent.

    Returns the planes a later record references (:func:`held_shape`); :func:`image_of` gives the frame."""
    stages = header.stages
    channels, height, width = header.coded_shape
    frame_bytes = header.coded_bytes
    if header.needs_reference:
        if reference is None:
            raise WireFormatError(f"record seq={header.seq} needs its reference seq={header.ref_seq}")
        if reference.shape != held_shape(header):
            raise WireFormatError(
                f"record seq={header.seq} needs a reference of {'x'.join(map(str, held_shape(header)))} "
                f"planes, its reference is {'x'.join(map(str, reference.shape))}"
                + (" (a YUV420 member needs a YUV420 reference)" if Stage.YUV420 in stages else "")
            )
    data: Planes
    blocks = Stage.BLOCK_CHROMA in stages
    # MED (or MED_CHROMA: planes 1 and 2) straight before CTX, on the planes as they are: undone by the coder's
    # own pass. BLOCK_CHROMA and JPEG_CHROMA lay their planes out first and have MED passes of their own.
    fused_med = (
        len(stages) >= 2
        and stages[-1] is Stage.CTX
        and stages[-2] in (Stage.MED, Stage.MED_CHROMA)
        and not blocks
        and Stage.JPEG_CHROMA not in stages
    )
    if Stage.CTX in stages:
        unmed: tuple[bool | None, ...] | None = None
        if fused_med:
            unmed = signedness(stages, channels)
            if stages[-2] is Stage.MED_CHROMA:
                unmed = (None, *unmed[1:])
        data = native.ctx_decode(
            payload,
            channels,
            height,
            width,
            group_planes=header.group_planes,
            banded_planes=header.banded_planes,
            unmed=unmed,
        )
    else:
        raw = payload
        packed_bound = frame_bytes + frame_bytes // 128 + channels * height + 16
        for stage in reversed(stages):
            if stage is Stage.ZSTD:
                raw = _unzstd(raw, packed_bound if Stage.PACKBITS in stages else frame_bytes)
            elif stage is Stage.PACKBITS:
                raw = packbits.decode_rows(raw, width, channels * height)
        if len(raw) != frame_bytes:
            raise WireFormatError(f"payload decodes to {len(raw)} bytes, the frame needs {frame_bytes}")
        data = np.frombuffer(raw, dtype=np.uint8).reshape(channels, height, width)
        del raw  # the array holds the buffer; it is freed as soon as the first pixel stage replaces it
    for stage in reversed(stages):
        if stage in (Stage.MED, Stage.MED_CHROMA) and fused_med:
            pass  # undone with CTX
        elif stage is Stage.MED and Stage.JPEG_CHROMA in stages:
            data = transforms.unmed_jpeg(data)
        elif stage is Stage.JPEG_CHROMA:
            if Stage.QUANTIZE_G in stages:  # plane 0 holds G's codes: the stage's G is their reconstruction
                data = np.concatenate([transforms.dequantize(data[:1], header.tolerance), data[1:]])
            data = transforms.jpeg_inverse(data)
        elif stage is Stage.QUANTIZE_G and Stage.JPEG_CHROMA in stages:
            pass  # undone with JPEG_CHROMA, whose input was QUANTIZE_G's reconstruction
        elif stage in (Stage.MED, Stage.MED_CHROMA) and blocks:
            data = transforms.unmed_blocks(data, signedness(stages, channels), luma=stage is Stage.MED)
        elif stage is Stage.MED:
            data = transforms.unmed(data, signedness(stages, channels))
        elif stage is Stage.MED_CHROMA:
            data = transforms.unmed_chroma(data, signedness(stages, channels))
        elif stage is Stage.BLOCK_CHROMA:
            data = transforms.unblock_chroma(data)
        elif stage is Stage.RCT:
            data = transforms.unrct(data, in_place=data.flags.writeable and data.base is None)
        elif stage is Stage.QUANTIZE:
            data = transforms.dequantize(data, header.tolerance)
        elif stage is Stage.RESIDUAL:
            assert reference is not None
            data = transforms.unresidual(data, reference)
        elif stage is Stage.RESIDUAL_Q:
            assert reference is not None
            data = transforms.dequantize_residual(data, reference, header.tolerance)
        elif stage is Stage.QUANTIZE_G:
            data = transforms.dequantize_g(data, header.tolerance)
        elif stage is Stage.RESIDUAL_QG:
            assert reference is not None
            data = transforms.dequantize_residual_g(data, reference, header.tolerance)
        elif stage is Stage.QUANTIZE_Y:
            rows = height * 2 // 3
            luma = transforms.dequantize(data[:, :rows], header.tolerance, step=luma_step(header.tolerance))
            data = np.concatenate([luma, data[:, rows:]], axis=1)
        elif stage is Stage.RESIDUAL_QY:
            assert reference is not None
            rows = height * 2 // 3
            luma = transforms.dequantize_residual(
                data[:, :rows], reference[:, :rows], header.tolerance, step=luma_step(header.tolerance)
            )
            chroma = transforms.unresidual(data[:, rows:], reference[:, rows:])
            data = np.concatenate([luma, chroma], axis=1)
    return np.ascontiguousarray(data)
