"""A deterministic synthetic street scene for tests, benchmarks and demos.

``Scene(settings).frame(i)`` is a pure function of the seed and the frame index: the same call always
returns the same pixels, so a test can regenerate any frame it needs instead of storing it. What the
key-frame selector and the codec care about is all there: a textured static background, objects that
move, lighting that drifts and a day/night cycle that changes every pixel slowly, sensor noise, and
an on-screen clock that changes a small patch every second.

Speed matters (the agent's own tests stream it in real time), so everything that does not depend on
the frame index is made once in ``__init__``: the background, the object paths and a bank of noise
images that each frame indexes with a per-frame row offset instead of drawing fresh random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from agent.capture.base import Image

_NOISE_BANK = 3
"""Noise images drawn once; each frame picks one of them and a row offset into it."""
_NOISE_SLACK_ROWS = 61
"""Extra rows in each noise image, so that consecutive frames see different noise."""
_NIGHT_GAIN = 0.25
"""Global gain at midnight (1.0 at noon)."""


SIDE_RANGE = (16, 8192)
"""Width and height the scene can be drawn at, in pixels."""
MAX_NOISE = 64.0
"""The largest sensor noise sigma, in grey levels."""


@dataclass(frozen=True, slots=True)
class SceneSettings:
    """How the simulated camera looks; ``seed`` alone decides every pixel."""

    seed: int = 1
    width: int = 1280
    height: int = 720
    fps: float = 10.0
    clock: bool = True
    """Burn the scene time into the top-left corner, as most CCTV cameras do."""
    noise: float = 2.0
    """Standard deviation of the Gaussian sensor noise in grey levels (0 turns it off)."""
    day_length_s: float = 120.0
    """Scene seconds from noon to noon (0 keeps it noon)."""

    def __post_init__(self) -> None:
        lo, hi = SIDE_RANGE
        if not (lo <= self.width <= hi and lo <= self.height <= hi):
            raise ValueError(f"scene size {self.width}x{self.height} is outside {lo}..{hi}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"scene fps must be positive, got {self.fps}")
        if not (0 <= self.noise <= MAX_NOISE):
            raise ValueError(f"scene noise must be within 0..{MAX_NOISE:g}, got {self.noise}")
        if not (self.day_length_s >= 0 and math.isfinite(self.day_length_s)):
            raise ValueError(f"scene day_length_s must be >= 0, got {self.day_length_s}")


@dataclass(frozen=True, slots=True)
class _Mover:
    """One object on a straight path that wraps around the frame edges."""

    ellipse: bool
    w: int
    h: int
    x0: float
    y0: float
    vx: float
    """Horizontal speed in pixels per scene second (negative: leftwards)."""
    vy_amp: float
    """Amplitude of a slow vertical sway, pixels."""
    vy_period_s: float
    colour: tuple[int, int, int]

    def top_left(self, t: float, width: int) -> tuple[int, int]:
        span = width + self.w
        x = (self.x0 + self.vx * t) % span - self.w
        y = self.y0 + self.vy_amp * math.sin(2 * math.pi * t / self.vy_period_s)
        return round(x), round(y)


class Scene:
    """Frames of one seeded scene; ``frame(i)`` is identical on every call."""

    def __init__(self, settings: SceneSettings | None = None) -> None:
        self.settings = s = settings if settings is not None else SceneSettings()
        rng = np.random.default_rng(s.seed)
        self._background = _background(rng, s.width, s.height)
        self._movers = _movers(rng, s.width, s.height)
        self._noise_pos: list[Image] = []
        self._noise_neg: list[Image] = []
        if s.noise > 0:
            for _ in range(_NOISE_BANK):
                n = rng.standard_normal((s.height + _NOISE_SLACK_ROWS, s.width, 3), dtype=np.float32)
                n = np.rint(n * np.float32(s.noise))
                self._noise_pos.append(n.clip(0, 255).astype(np.uint8))
                self._noise_neg.append((-n).clip(0, 255).astype(np.uint8))
        self._font_scale = max(0.5, s.height / 720)
        self._font_thickness = max(1, round(s.height / 480))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.settings.height, self.settings.width, 3)

    def time_s(self, i: int) -> float:
        """Scene time of frame ``i``."""
        return i / self.settings.fps

    def gain(self, i: int) -> float:
        """Global brightness: a day/night cycle plus a slow drift, as clouds and auto-exposure cause."""
        t = self.time_s(i)
        day = 1.0
        if self.settings.day_length_s > 0:
            day = _NIGHT_GAIN + (1 - _NIGHT_GAIN) * (
                0.5 + 0.5 * math.cos(2 * math.pi * t / self.settings.day_length_s)
            )
        drift = 1.0 + 0.04 * math.sin(2 * math.pi * t / 23.0) + 0.02 * math.sin(2 * math.pi * t / 7.3)
        return day * drift

    def frame(self, i: int) -> Image:
        """The BGR ``uint8`` picture of frame ``i`` (a new array the caller may keep or modify)."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        s = self.settings
        t = self.time_s(i)
        g = self.gain(i)
        img = np.asarray(cv2.convertScaleAbs(self._background, alpha=g), dtype=np.uint8)
        for m in self._movers:
            x, y = m.top_left(t, s.width)
            colour = tuple(min(255, round(c * g)) for c in m.colour)
            if m.ellipse:
                centre = (x + m.w // 2, y + m.h // 2)
                cv2.ellipse(img, centre, (m.w // 2, m.h // 2), 0, 0, 360, colour, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(img, (x, y), (x + m.w, y + m.h), colour, -1, cv2.LINE_AA)
        if self._noise_pos:
            rng = np.random.default_rng((s.seed, i))
            k = int(rng.integers(_NOISE_BANK))
            r = int(rng.integers(_NOISE_SLACK_ROWS + 1))
            cv2.add(img, self._noise_pos[k][r : r + s.height], dst=img)
            cv2.subtract(img, self._noise_neg[k][r : r + s.height], dst=img)
        if s.clock:
            self._draw_clock(img, t)
        return img

    def _draw_clock(self, img: Image, t: float) -> None:
        whole = int(t)
        text = f"SIM {whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}.{int(t * 10) % 10}"
        org = (round(10 * self._font_scale), round(34 * self._font_scale))
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(img, text, org, font, self._font_scale, (0, 0, 0), self._font_thickness + 1, cv2.LINE_AA)
        cv2.putText(
            img, text, org, font, self._font_scale, (255, 255, 255), self._font_thickness, cv2.LINE_AA
        )


def _background(rng: np.random.Generator, width: int, height: int) -> Image:
    """Sky gradient, a textured ground, and a row of buildings with windows."""
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = np.array([235, 190, 150], np.float32) * (1 - 0.4 * yy)
    img = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * 0.55)
    img[horizon:] = np.array([90, 100, 105], np.float32)
    # Smoothed noise at two scales: a texture the codec cannot predict away, but not white noise.
    # Mostly brightness texture with a little colour, as on real walls and tarmac.
    for cell, amp, chroma in ((16, 18.0, 0.25), (4, 8.0, 0.15)):
        shape = (max(2, height // cell), max(2, width // cell))
        luma = rng.normal(0.0, 1.0, (*shape, 1)).astype(np.float32)
        small = luma + chroma * rng.normal(0.0, 1.0, (*shape, 3)).astype(np.float32)
        img += amp * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    x = 0
    while x < width:
        bw = int(rng.integers(width // 16, width // 6))
        top = int(rng.integers(int(height * 0.15), int(height * 0.45)))
        colour = rng.integers(60, 200, 3).astype(np.float32)
        img[top:horizon, x : x + bw] = 0.5 * img[top:horizon, x : x + bw] + 0.5 * colour
        win = max(3, bw // 10)
        for wy in range(top + win, horizon - win, 2 * win):
            for wx in range(x + win, x + bw - win, 2 * win):
                lit = rng.random() < 0.4
                img[wy : wy + win, wx : wx + win] = (60, 200, 240) if lit else (40, 40, 40)
        x += bw + int(rng.integers(0, width // 40 + 1))
    # A road with lane marks, where the cars will drive.
    road = int(height * 0.72)
    img[road : road + max(2, height // 120), :] = (230, 230, 230)
    out: Image = np.ascontiguousarray(img.clip(0, 255).astype(np.uint8))
    return out


def _movers(rng: np.random.Generator, width: int, height: int) -> list[_Mover]:
    """A few cars on the road and pedestrians on the pavement, with seeded speeds and colours."""
    movers = []
    unit = height / 720
    for lane in range(4):
        w, h = round(rng.uniform(140, 220) * unit), round(rng.uniform(60, 90) * unit)
        y0 = height * (0.60 + 0.07 * lane)
        speed = rng.uniform(60, 160) * unit * (1 if lane % 2 == 0 else -1)
        colour = tuple(int(c) for c in rng.integers(20, 240, 3))
        movers.append(
            _Mover(False, w, h, rng.uniform(0, width), y0, speed, 0.0, 1.0, (colour[0], colour[1], colour[2]))
        )
    for _ in range(3):
        w, h = round(rng.uniform(26, 40) * unit), round(rng.uniform(70, 100) * unit)
        y0 = height * rng.uniform(0.45, 0.52)
        colour = tuple(int(c) for c in rng.integers(20, 240, 3))
        movers.append(
            _Mover(
                True,
                w,
                h,
                rng.uniform(0, width),
                y0,
                rng.choice([-1.0, 1.0]) * rng.uniform(10, 40) * unit,
                rng.uniform(5, 20) * unit,
                rng.uniform(3, 9),
                (colour[0], colour[1], colour[2]),
            )
        )
    return movers
