"""Codec settings: what the encoder may choose. The decoder needs none of them (records say it all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.codec import native
from agent.codec.wire import Stage

Reference = Literal["key", "previous", "auto"]
Entropy = Literal["auto", "ctx", "zstd"]


@dataclass(frozen=True, slots=True)
class CodecSettings:
    """How frames are keyed and coded.

    Defaults were picked by measurement on the public footage (``docs/benchmarks.md``).
    """

    threshold: float = 0.5
    """A frame whose SSIM to the current key falls below this becomes a new key (the seed's rule)."""
    max_key_interval_frames: int = 120
    """Force a key after this many frames in one group (bounds what one lost record can take with it)."""
    max_key_interval_s: float = 600.0
    """Force a key when the group's key is older than this (capture time); 0 disables."""
    reference: Reference = "previous"
    """Members reference the group's key (the seed's choice), the previous frame (chained), or pick per frame."""
    tolerance: int = 0
    """0 = lossless. T > 0: every reconstructed pixel is within T of the captured one."""
    ssim_downscale: int = 4
    """SSIM is computed on grey frames shrunk by this factor (1 = full size)."""
    zstd_level: int = 1
    """Entropy stage effort (1 is fast enough for a Pi; higher buys little on residuals)."""
    packbits: bool = True
    """With zstd, run PackBits before it on residuals (it shortens zstd's input where residuals are exactly zero)."""
    entropy: Entropy = "auto"
    """The entropy stage: "ctx" (context-modelled rANS, compiled; 15-25 % smaller), "zstd" (PackBits + zstd,
    at most 10 % less encode time, none on PETS), or "auto": ctx when the compiled coder is installed,
    else zstd."""

    jpeg_chroma: bool = False
    """Also try, for frames coded on their own, the JPEG_CHROMA stage: stills decoded from 4:2:0 JPEGs (snapshot
    cameras, image folders) code 16-27 % smaller, at about twice the encode time of a 1080p frame where it is
    used (24 ms more on the team's x86 VM, which leaves a still at 5x the seed's speed instead of 10x), so it
    is off unless asked for (docs/benchmarks.md). With a tolerance it also comes after QUANTIZE_G (the LTA stills
    at T=2 11.3 -> 15.1x). Needs the compiled module."""

    yuv: bool = True
    """Where a frame comes with the yuv420p picture it was converted from (video files and RTSP cameras decoded by
    the ffmpeg child), code the picture instead of the frame (stage YUV420): the same frame, bit for bit, from
    half the samples, 1.26-1.38x smaller on the public videos (docs/benchmarks.md). With a tolerance only the
    pictures' Y is quantised, on a lattice whose points keep B, G and R within T (at T=2 1.19-1.47x smaller
    than the frames with G quantised)."""

    @property
    def entropy_stage(self) -> Stage:
        """The stage ``entropy`` resolves to on this install."""
        if self.entropy == "zstd" or (self.entropy == "auto" and not native.AVAILABLE):
            return Stage.ZSTD
        return Stage.CTX

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {self.threshold}")
        if self.max_key_interval_frames < 1:
            raise ValueError(f"max_key_interval_frames must be ≥ 1, got {self.max_key_interval_frames}")
        if self.max_key_interval_s < 0:
            raise ValueError(f"max_key_interval_s must be ≥ 0, got {self.max_key_interval_s}")
        if self.reference not in ("key", "previous", "auto"):
            raise ValueError(f"reference must be 'key', 'previous' or 'auto', got {self.reference!r}")
        if not 0 <= self.tolerance <= 32:
            raise ValueError(f"tolerance must be within 0..32, got {self.tolerance}")
        if not 1 <= self.ssim_downscale <= 16:
            raise ValueError(f"ssim_downscale must be within 1..16, got {self.ssim_downscale}")
        if self.entropy not in ("auto", "ctx", "zstd"):
            raise ValueError(f"entropy must be 'auto', 'ctx' or 'zstd', got {self.entropy!r}")
        if self.entropy == "ctx" and not native.AVAILABLE:
            raise ValueError(f"entropy 'ctx' is not available: {native.MISSING}")
        if self.jpeg_chroma and not native.AVAILABLE:
            raise ValueError(f"jpeg_chroma is not available: {native.MISSING}")
        if not 1 <= self.zstd_level <= 19:
            raise ValueError(f"zstd_level must be within 1..19, got {self.zstd_level}")
