"""Network cameras: RTSP and RTSPS through an ``ffmpeg`` child or OpenCV, HTTP (MJPEG) through OpenCV.

RTSP video is decoded by an ``ffmpeg`` child where one is installed (``decoder``; ``agent.capture.ffmpeg``
says why: through OpenCV a Raspberry Pi's frames differ from a PC's and code 28-35 % larger). The child gets
the same transport (TCP) and its socket timeout is ``read_timeout_s``, so a camera that goes silent ends it
and the reader reconnects; ``ffprobe`` first checks that the stream's pictures suit it.

Both timeouts are explicit: without them FFmpeg may wait forever for a camera that went away
(OpenCV's defaults are 30 s, and older builds had none). RTSP goes over TCP: over UDP a lost packet
is a smeared frame, and most NATs and firewalls drop the UDP ports RTSP negotiates. OpenCV offers no
per-capture way to say so; it reads FFmpeg options from ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` when a
capture is opened, so that variable is set around the open (under a lock, restored afterwards).

A change of resolution must reach the caller (the codec starts a new key frame on it), but OpenCV's
FFmpeg backend scales every decoded picture to the size it probed when opening. For MJPEG the
stream is therefore opened in raw mode and each JPEG decoded here, at its own size. For H.264/H.265
over RTSP the new size shows after the next reconnect -- cameras end the RTSP session when their
resolution is changed, so in practice that is at once.

RTSPS, HTTPS and the camera's certificate: the ffmpeg child encrypts but does not verify it (Debian 12's
ffmpeg 5.1 has no option to: ``-tls_verify`` and ``-ca_file`` are unknown to its RTSP client). With
``ca_file`` the certificate must verify against that file, the camera's own self-signed certificate or the CA
that signed it, and name the host in the URL; OpenCV's FFmpeg takes both options, for RTSP and HTTP alike, so
such a camera is decoded by OpenCV. Without ``ca_file`` OpenCV does what its build does: PyPI's OpenCV 5
checks against the system's CAs, 4.x does not check.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from agent.capture import ffmpeg
from agent.capture.latest import Capture, LiveSource
from agent.errors import CaptureError
from agent.urls import redact

log = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps", "http", "https")
TLS_SCHEMES = ("rtsps", "https")
"""The schemes whose camera can prove its certificate against ``ca_file``."""
_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_env_lock = threading.Lock()
_MJPG = cv2.VideoWriter.fourcc(*"MJPG")
_CORRUPT_IN_A_ROW = 3
"""Undecodable JPEGs tolerated in a row before the connection is deemed broken."""


class _JpegCapture:
    """A raw-mode capture of an MJPEG stream, decoding each JPEG at its own size (a time-lapse's reader decodes
    only the JPEGs taken: ``read_raw`` and ``decode``, as ``agent.capture.latest.RawCapture``)."""

    def __init__(self, cap: Capture, name: str) -> None:
        self._cap = cap
        self._name = name

    def read(self) -> tuple[bool, np.ndarray | None]:
        for _ in range(_CORRUPT_IN_A_ROW):
            data = self.read_raw()
            if data is None:
                return False, None
            image, _ = self.decode(data)
            if image is not None:
                return True, image
            log.warning("%s: skipped an undecodable JPEG (%d bytes)", self._name, len(data))
        return False, None

    def read_raw(self) -> bytes | None:
        """The next JPEG's bytes, not decoded; None when the stream ended or failed."""
        ok, data = self._cap.read()
        return None if not ok or data is None else bytes(data)

    @staticmethod
    def decode(raw: bytes) -> tuple[np.ndarray | None, None]:
        """The JPEG decoded (None when it does not decode), and no picture to hand on."""
        image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
        return image, None

    def release(self) -> None:
        self._cap.release()


def ffmpeg_options(url: str, ca_file: Path | None = None) -> str:
    """The FFmpeg options string for ``url`` (``key;value|key;value``, OpenCV's syntax); with ``ca_file`` the
    camera's certificate must verify against it."""
    options = ["rtsp_transport;tcp"] if urlsplit(url).scheme.lower() in ("rtsp", "rtsps") else []
    if ca_file is not None:
        options += [f"ca_file;{ca_file}", "tls_verify;1"]
    return "|".join(options)


class StreamSource(LiveSource):
    """An RTSP/RTSPS/HTTP-MJPEG camera; ``read()`` returns the newest frame (see ``LiveSource``)."""

    def __init__(
        self,
        url: str,
        *,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        stall_timeout_s: float = 30.0,
        reconnect_max_s: float = 60.0,
        name: str | None = None,
        decoder: str = "auto",
        ca_file: Path | None = None,
        sampled: bool = False,
    ) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in SCHEMES:
            raise CaptureError(
                f"{redact(url)}: unsupported scheme {scheme!r} (expected one of {', '.join(SCHEMES)})"
            )
        super().__init__(
            name or redact(url),
            open_timeout_s=open_timeout_s,
            read_timeout_s=read_timeout_s,
            stall_timeout_s=stall_timeout_s,
            reconnect_max_s=reconnect_max_s,
            sampled=sampled,
        )
        ffmpeg.check_decoder(decoder, self.name)
        if decoder == "ffmpeg" and scheme not in ("rtsp", "rtsps"):
            raise CaptureError(
                f"{self.name}: decoder = 'ffmpeg' is for RTSP; HTTP MJPEG is decoded by OpenCV"
            )
        if ca_file is not None:
            _check_ca_file(ca_file, scheme, decoder, self.name)
        self.url = url
        self._scheme = scheme
        self.decoder = decoder
        self.ca_file = ca_file
        """RTSPS, HTTPS: the certificate (or CA) the camera's must verify against; None = not checked here."""
        self.decoded_by = ""
        """``"ffmpeg"`` or ``"opencv"``: who decodes the current connection."""
        self._said_unchecked = False  # whether the log said that the child does not check the certificate

    def _open_capture(self) -> Capture:
        if self._scheme in ("rtsp", "rtsps") and self.ca_file is None:
            child = self._open_child()
            if child is not None:
                return child
        self.decoded_by = "opencv"
        if self._scheme in ("http", "https"):
            raw = self._open_ffmpeg([cv2.CAP_PROP_FORMAT, -1])
            if int(raw.get(cv2.CAP_PROP_FOURCC)) == _MJPG:
                self._log_opened(raw, "MJPEG, decoded per frame")
                return _JpegCapture(raw, self.name)
            raw.release()
        cap = self._open_ffmpeg([])
        self._log_opened(cap, f"FFmpeg options {ffmpeg_options(self.url, self.ca_file)!r}")
        opened: Capture = cap
        return opened

    def _open_child(self) -> ffmpeg.FfmpegCapture | None:
        """The ffmpeg child for an RTSP camera, or ``None`` where ``auto`` falls back to OpenCV."""
        options = ffmpeg.rtsp_options(self.read_timeout_s)
        capture = ffmpeg.start(
            self.url, options, self.open_timeout_s, self.name, self.decoder, unreadable_falls_back=False
        )
        if capture is None:
            return None
        capture.prime()
        self.decoded_by = "ffmpeg"
        log.info("%s: opened %s", self.name, capture.describe())
        if self._scheme == "rtsps" and not self._said_unchecked:
            self._said_unchecked = True  # once a source, not at every reconnect
            log.warning(
                "%s: the stream is encrypted, but the ffmpeg child does not check the camera's certificate; "
                "capture.ca_file names one to check it against (the camera is then decoded by OpenCV)",
                self.name,
            )
        return capture

    def _open_ffmpeg(self, extra: list[int]) -> Any:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            round(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            round(self.read_timeout_s * 1000),
            *extra,
        ]
        options = ffmpeg_options(self.url, self.ca_file)
        with _env_lock:
            before = os.environ.get(_OPTIONS_ENV)
            if options:
                os.environ[_OPTIONS_ENV] = options
            elif before is not None:
                del os.environ[_OPTIONS_ENV]
            try:
                cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
            finally:
                if before is None:
                    os.environ.pop(_OPTIONS_ENV, None)
                else:
                    os.environ[_OPTIONS_ENV] = before
        if not cap.isOpened():
            cap.release()
            if self.ca_file is not None:
                certificate = f"; that its certificate verifies against {self.ca_file} and names the host"
            elif self._scheme in TLS_SCHEMES:
                certificate = (
                    "; OpenCV may refuse a certificate the system's CAs do not sign: capture.ca_file names the "
                    "camera's own certificate or its CA to check it against"
                )
            else:
                certificate = ""
            raise CaptureError(
                f"{self.name}: could not open within {self.open_timeout_s:.0f} s "
                f"(check the address, credentials and that the camera is reachable{certificate})"
            )
        return cap

    def _log_opened(self, cap: Any, how: str) -> None:
        log.info(
            "%s: opened %dx%d at %.1f fps (%s)",
            self.name,
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            cap.get(cv2.CAP_PROP_FPS),
            how,
        )


def _check_ca_file(ca_file: Path, scheme: str, decoder: str, name: str) -> None:
    """Refuse a ``ca_file`` that would not be used, or could not be said to OpenCV (see the module note)."""
    if scheme not in TLS_SCHEMES:
        raise CaptureError(f"{name}: a CA file is for rtsps:// and https:// cameras only")
    if decoder == "ffmpeg":
        raise CaptureError(
            f"{name}: decoder = 'ffmpeg' cannot check the camera's certificate (the ffmpeg command's RTSP "
            "client takes no CA file); with a CA file the camera is decoded by OpenCV: use 'auto' or 'opencv'"
        )
    if any(c in str(ca_file) for c in "|;"):
        raise CaptureError(f"{name}: the CA file's path must not hold '|' or ';' (OpenCV's option syntax)")
