"""The demo's picture: bytes per frame over time with key frames marked, and originals beside reconstructions.

Drawn with OpenCV only, so the demo needs no plotting library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[Any]
WHITE = (255, 255, 255)
GREY = (160, 160, 160)
BLUE = (200, 120, 40)
RED = (40, 40, 220)
BLACK = (0, 0, 0)


def _text(
    canvas: Image, text: str, xy: tuple[int, int], scale: float = 0.5, colour: tuple[int, ...] = BLACK
) -> None:
    cv2.putText(canvas, text, xy, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def bytes_chart(sizes: Sequence[int], is_key: Sequence[bool], raw_bytes: int, width: int = 1200) -> Image:
    """Bars of encoded bytes per frame (keys in red), on a log scale, with the raw frame size for scale."""
    height, left, bottom, top = 360, 70, 40, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - 20, height - top - bottom
    lo, hi = np.log10(max(1, min(sizes))) - 0.1, np.log10(max(raw_bytes, max(sizes))) + 0.1

    def y_of(value: float) -> int:
        return int(top + plot_h * (1 - (np.log10(max(value, 1)) - lo) / (hi - lo)))

    for decade in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        y = y_of(10.0**decade)
        if top <= y <= top + plot_h:
            cv2.line(canvas, (left, y), (left + plot_w, y), (230, 230, 230), 1)
            _text(canvas, f"{10**decade:,.0f}", (5, y + 4), 0.4, GREY)
    bar = plot_w / max(1, len(sizes))
    for i, (size, key) in enumerate(zip(sizes, is_key, strict=True)):
        x0, x1 = int(left + i * bar), max(int(left + i * bar) + 1, int(left + (i + 1) * bar) - 1)
        cv2.rectangle(canvas, (x0, y_of(size)), (x1, top + plot_h), RED if key else BLUE, -1)
    raw_y = y_of(raw_bytes)
    cv2.line(canvas, (left, raw_y), (left + plot_w, raw_y), BLACK, 1)
    _text(canvas, "raw frame", (left + plot_w - 90, raw_y - 6), 0.45)
    _text(canvas, "bytes per frame on the wire (log scale); red = key frame, blue = member", (left, 25), 0.55)
    _text(canvas, "frame (capture order) ->", (left, height - 12), 0.45, GREY)
    return canvas


def contact_sheet(pairs: Sequence[tuple[str, Image, Image]], thumb_width: int = 400) -> Image:
    """One row per sample: original | reconstruction | |difference| amplified ×32."""
    rows = []
    for label, original, decoded in pairs:
        scale = thumb_width / original.shape[1]
        size = (thumb_width, round(original.shape[0] * scale))
        diff = np.minimum(cv2.absdiff(original, decoded).astype(np.uint16) * 32, 255).astype(np.uint8)
        tiles = [cv2.resize(img, size, interpolation=cv2.INTER_AREA) for img in (original, decoded, diff)]
        row = cv2.hconcat(
            [cv2.copyMakeBorder(t, 24, 4, 4, 4, cv2.BORDER_CONSTANT, value=WHITE) for t in tiles]
        )
        for i, caption in enumerate(("captured", "reconstructed", "|difference| x32")):
            _text(row, f"{label}: {caption}", (8 + i * (thumb_width + 8), 17), 0.45)
        rows.append(row)
    return cv2.vconcat(rows)


def compose(chart: Image, sheet: Image) -> Image:
    width = max(chart.shape[1], sheet.shape[1])

    def pad(img: Image) -> Image:
        return cv2.copyMakeBorder(img, 0, 0, 0, width - img.shape[1], cv2.BORDER_CONSTANT, value=WHITE)

    return cv2.vconcat([pad(chart), pad(sheet)])
