"""Pick the capture source for a camera's configured kind.

The config loader maps its models onto these keyword arguments; this module knows which of them
each kind needs. Sources are imported lazily, so that a replay-only install does not need what a
live camera needs, and the other way round.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.capture.base import CaptureSource
    from agent.simulate.scene import SceneSettings

KINDS = ("usb", "rtsp", "http", "file", "folder", "simulated")
_ALIASES = {
    "v4l2": "usb",
    "rtsps": "rtsp",
    "https": "http",
    "mjpeg": "http",
    "video": "file",
    "images": "folder",
}


def _need(kind: str, key: str, value: object) -> None:
    if value is None:
        raise ConfigError(key, f"is required for a {kind!r} source")


def open_source(
    kind: str,
    *,
    device: str | int | None = None,
    url: str | None = None,
    path: str | Path | None = None,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    fourcc: str | None = None,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 10.0,
    stall_timeout_s: float = 30.0,
    reconnect_max_s: float = 60.0,
    loop: bool = False,
    decoder: str = "auto",
    ca_file: Path | None = None,
    sim: SceneSettings | None = None,
    sampled: bool = False,
) -> CaptureSource:
    """Build the source for ``kind``; it is *not* opened yet: use ``with`` or call ``open()``.

    ``sampled``: the caller takes one frame in many (a time-lapse), so a live camera decodes only the frames
    taken (``agent.capture.latest``).

    Raises ``ConfigError`` naming the missing or unknown key. Keys a kind does not use are ignored
    (``width`` means nothing to an RTSP camera, whose stream decides its size).
    """
    k = _ALIASES.get(kind.lower(), kind.lower())
    if k == "usb":
        from agent.capture.usb import UsbSource

        _need(k, "device", device)
        assert device is not None
        return UsbSource(
            device,
            width=width,
            height=height,
            fps=fps,
            fourcc=fourcc,
            sampled=sampled,
            open_timeout_s=open_timeout_s,
            read_timeout_s=read_timeout_s,
            stall_timeout_s=stall_timeout_s,
            reconnect_max_s=reconnect_max_s,
        )
    if k in ("rtsp", "http"):
        from agent.capture.stream import StreamSource

        _need(k, "url", url)
        assert url is not None
        return StreamSource(
            url,
            decoder=decoder,
            ca_file=ca_file,
            sampled=sampled,
            open_timeout_s=open_timeout_s,
            read_timeout_s=read_timeout_s,
            stall_timeout_s=stall_timeout_s,
            reconnect_max_s=reconnect_max_s,
        )
    if k in ("file", "folder"):
        from agent.capture.files import ImageFolderSource, VideoFileSource

        _need(k, "path", path)
        assert path is not None
        return (
            VideoFileSource(Path(path), loop=loop, decoder=decoder)
            if k == "file"
            else ImageFolderSource(Path(path), loop=loop)
        )
    if k == "simulated":
        from agent.capture.simulated import SimulatedSource
        from agent.simulate.scene import SceneSettings

        settings = sim if sim is not None else SceneSettings()
        settings = replace(
            settings,
            width=width or settings.width,
            height=height or settings.height,
            fps=fps or settings.fps,
        )
        return SimulatedSource(settings, realtime=True)
    raise ConfigError("kind", f"unknown capture source {kind!r} (expected one of {', '.join(KINDS)})")
