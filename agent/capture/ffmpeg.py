"""Video decoded by an ``ffmpeg`` child process and converted to BGR here, the same way on every machine.

OpenCV decodes video to BGR with FFmpeg's swscale, whose rounding depends on the CPU (``yuv`` says how, and
what it costs a Raspberry Pi), and it cannot hand out the decoded YUV planes instead (with
``CAP_PROP_CONVERT_RGB`` off its FFmpeg backend returns the luma plane alone). So a child ``ffmpeg`` decodes
and writes each picture's planes untouched to a pipe (raw ``yuv420p``), and :func:`yuv.to_bgr` converts them.
On x86-64 the frames are the ones OpenCV gives (``tests/unit/test_yuv.py``, and RTSP's in
``tests/integration/test_capture_stream.py``); elsewhere they are those same frames, where OpenCV's are not.

Only pictures that are already limited-range ``yuv420p`` (nearly every camera's H.264, H.265 and MPEG-4) take
this path, so that the child converts nothing; anything else (full-range ``yuvj420p``, 4:2:2, RGB codecs)
stays with OpenCV, which converts it as it always has (:func:`unsuitable` says why).

A camera's URL (and its password) reaches the child on its stdin, never on its command line
(:func:`input_arguments`). The child runs with ``-loglevel error``; a thread reads its messages as they come
(a pipe nobody reads would fill and stop it), logs them at debug level and keeps the last few for error
messages; the child is killed on ``release()``. Like an OpenCV capture, a ``FfmpegCapture`` is used from one
thread; a size change inside a stream is scaled to the size probed at the start, as OpenCV does.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import re
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from functools import cache
from typing import IO, Any, cast
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from agent.codec import yuv
from agent.errors import CaptureError

log = logging.getLogger(__name__)

DECODERS = ("auto", "ffmpeg", "opencv")
"""``auto``: the ffmpeg child where it is installed and the video suits it, else OpenCV."""

_STDERR_TAIL = 600
"""Characters of the child's last messages quoted in an error."""
_STDERR_LINES = 20
"""Lines of the child's messages kept."""


def check_decoder(decoder: str, what: str) -> None:
    """``CaptureError`` naming ``what`` unless ``decoder`` is one of :data:`DECODERS`."""
    if decoder not in DECODERS:
        raise CaptureError(f"{what}: unknown decoder {decoder!r} (expected one of {DECODERS})")


def available() -> bool:
    """Whether ``ffmpeg`` and ``ffprobe`` are on PATH."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


@cache
def _major_version() -> int:
    """ffmpeg's major version, or a large number for a git build (which has the newest options)."""
    try:
        out = subprocess.run(
            ["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 99
    match = re.match(r"ffmpeg version n?(\d+)\.", out)
    return int(match.group(1)) if match else 99


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What ``ffprobe`` says of a source's first video stream."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    color_range: str
    fps: float


def probe(target: str, input_options: list[str], timeout_s: float) -> VideoInfo:
    """Ask ``ffprobe`` about ``target``'s first video stream; ``CaptureError`` with its words if it cannot."""
    given = input_arguments(target, input_options)
    command = [
        "ffprobe",
        "-hide_banner",
        "-loglevel",
        "error",
        *given.arguments,
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=codec_name,width,height,pix_fmt,color_range,avg_frame_rate,r_frame_rate",
        "-of",
        "json",
    ]
    try:
        done = subprocess.run(
            command,
            input="" if given.script is None else given.script,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise CaptureError(f"ffprobe gave no answer within {timeout_s:.0f} s") from e
    except OSError as e:
        raise CaptureError(f"cannot run ffprobe: {e}") from e
    streams: list[dict[str, Any]] = []
    if done.returncode == 0:
        try:
            streams = json.loads(done.stdout).get("streams") or []
        except json.JSONDecodeError:
            streams = []
    if not streams:
        said = masked(done.stderr.strip(), target)[-_STDERR_TAIL:] or "no video stream"
        raise CaptureError(f"ffprobe cannot read it: {said}")
    s = streams[0]
    return VideoInfo(
        codec=str(s.get("codec_name", "?")),
        width=int(s.get("width") or 0),
        height=int(s.get("height") or 0),
        pix_fmt=str(s.get("pix_fmt", "?")),
        color_range=str(s.get("color_range", "unknown")),
        fps=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")),
    )


_NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
_NETWORK_PROTOCOLS = "pipe,tcp,udp,rtp,srtp,tls,http,https,httpproxy,crypto"
"""What a camera's URL may make ffmpeg open once it reads the URL from a script: RTSP's TCP or UDP, RTSPS's
TLS, and HTTP(S); ``pipe`` for the script itself."""


@dataclass(frozen=True, slots=True)
class InputArguments:
    """How ffmpeg and ffprobe are told their input: ``arguments`` for the command line, and ``script`` to
    write to the child's stdin (``None``: the command line says it all)."""

    arguments: list[str]
    script: str | None


def input_arguments(target: str, input_options: list[str]) -> InputArguments:
    """The input part of a command line for ``target`` with ``input_options`` (``-name value`` pairs).

    A camera's URL holds its password (``rtsp://user:password@host/...``) and often a token in its query, and
    a process's command line is world-readable in ``/proc``. So a network URL is not put on it: the child reads
    it from stdin as an ``ffconcat`` script of one ``file``, whose ``option`` lines carry the input options to
    the camera's own demuxer (the concat demuxer opens it with them; FFmpeg 5.0 and later). A file's path, and
    any URL for an older ffmpeg, go on the command line as before.
    """
    scheme = urlsplit(target).scheme.lower() if "://" in target else ""
    if scheme not in _NETWORK_SCHEMES or _major_version() < 5:
        return InputArguments([*input_options, "-i", target], None)
    return InputArguments(
        ["-protocol_whitelist", _NETWORK_PROTOCOLS, "-f", "concat", "-safe", "0", "-i", "pipe:0"],
        concat_script(target, input_options),
    )


def concat_script(target: str, input_options: list[str]) -> str:
    """An ``ffconcat`` script that opens ``target`` (any URL or path) with ``input_options`` (pairs of
    ``-name value``); ``ValueError`` for an odd list or a line break, which a script cannot carry."""
    names = input_options[::2]
    if len(input_options) % 2 or not all(re.fullmatch(r"-\w+", name, re.ASCII) for name in names):
        raise ValueError(f"input options must be -name value pairs, got {input_options}")
    lines = ["ffconcat version 1.0", f"file {_token(target)}"]
    for name, value in zip(names, input_options[1::2], strict=True):
        lines.append(f"option {name[1:]} {_token(value)}")  # a directive's keyword is read as it is
    return "\n".join(lines) + "\n"


def _token(text: str) -> str:
    """``text`` as one token of an ffconcat line: every character but letters and digits escaped with a
    backslash (FFmpeg's ``av_get_token`` takes the character after one literally)."""
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("an ffconcat script cannot carry a line break or a NUL")
    return "".join(c if c.isascii() and c.isalnum() else "\\" + c for c in text)


def _rate(text: object) -> float:
    if not isinstance(text, str) or "/" not in text:
        return 0.0
    num, _, den = text.partition("/")
    try:
        return float(num) / float(den) if float(den) else 0.0
    except ValueError:
        return 0.0


def masked(text: str, target: str) -> str:
    """``text`` without ``target``'s password, where ``target`` is a URL that has one (ffmpeg quotes its input)."""
    password = urlsplit(target).password if "://" in target else None
    return text.replace(password, "***") if password else text


def unsuitable(info: VideoInfo) -> str | None:
    """Why ``info``'s pictures must stay with OpenCV, or ``None`` when the child can hand them out as they are."""
    if info.width < 1 or info.height < 1:
        return "its size is unknown"
    if info.pix_fmt != "yuv420p":
        return f"its pictures are {info.pix_fmt}, not yuv420p"
    if info.color_range == "pc":
        return "its pictures are full-range"
    return None


class FfmpegCapture:
    """A running ``ffmpeg`` child decoding one source; ``read()`` and ``release()`` as ``cv2.VideoCapture``'s."""

    def __init__(self, target: str, info: VideoInfo, input_options: list[str], what: str) -> None:
        self.info = info
        self._target = target
        self._what = what
        self._size = yuv.picture_bytes(info.width, info.height)
        passthrough = ["-fps_mode", "passthrough"] if _major_version() >= 5 else ["-vsync", "passthrough"]
        given = input_arguments(target, input_options)
        command = [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            *given.arguments,
            "-map",
            "0:v:0",
            "-an",
            "-sn",
            "-dn",
            *passthrough,
            "-vf",
            f"scale={info.width}:{info.height}",  # a no-op unless the stream changes size
            "-pix_fmt",
            "yuv420p",
            "-f",
            "rawvideo",
            "pipe:1",
        ]
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL if given.script is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise CaptureError(f"{what}: cannot start ffmpeg: {e}") from e
        if given.script is not None:
            _hand_over(self._process, given.script)
        _widen_pipe(self._process.stdout, self._size)
        self._said: deque[str] = deque(maxlen=_STDERR_LINES)
        self._said_lock = threading.Lock()
        self._listener = threading.Thread(
            target=self._listen, args=(self._process.stderr,), name=f"ffmpeg-stderr-{what}", daemon=True
        )
        self._listener.start()
        self._frames = 0
        self._interrupted = False
        self._pending: bytes | None = None  # the picture prime() waited for, handed out first
        self._picture = bytearray(self._size)  # reused: each picture is read into it, ``picture`` is a copy
        self.picture: bytes | None = None
        """The yuv420p picture of the frame ``read()`` returned last (the codec may code it instead)."""

    def describe(self) -> str:
        """What is decoded, for the log line that says a source opened."""
        i = self.info
        return f"{i.width}x{i.height} {i.codec} at {i.fps:.1f} fps, decoded by an ffmpeg child"

    def prime(self) -> None:
        """Wait for the first picture (kept for ``read()``), as OpenCV's open does; ``CaptureError`` with the
        child's own words when none comes (a refused password, a missing path, a silent camera)."""
        picture = self.read_raw()
        if picture is None:
            said = self.said()
            self.release()
            raise CaptureError(f"{self._what}: ffmpeg gave no picture" + (f": {said}" if said else ""))
        self._pending = picture
        self._frames = 0

    def read(self) -> tuple[bool, npt.NDArray[np.uint8] | None]:
        """The next frame, or ``(False, None)`` at the end of the stream or when the child failed."""
        picture = self.read_raw()
        if picture is None:
            return False, None
        return True, self.decode(picture)[0]

    def read_raw(self) -> bytes | None:
        """The next yuv420p picture as it came from the child, not converted (``decode`` does that), or None
        at the end of the stream or when the child failed. Why apart from ``read()``: a time-lapse's reader
        takes every picture to keep only the newest, and converting each one cost a 1080p camera's reader 2 ms
        a picture here (several times that on a Raspberry Pi) for frames nobody used."""
        if self._pending is not None:
            self.picture, self._pending = self._pending, None
            self._frames += 1
            return self.picture
        process = self._process
        if process is None or process.stdout is None:
            return None
        pipe = cast("io.RawIOBase", process.stdout)  # unbuffered (bufsize 0 is Popen's default): a FileIO
        picture = self._picture
        view = memoryview(picture)
        got = 0
        while got < self._size:
            n = pipe.readinto(view[got:])
            if not n:
                break
            got += n
        if got < self._size:
            self.picture = None
            self._finish(got)
            return None
        self._frames += 1
        self.picture = bytes(picture)
        return self.picture

    def decode(self, raw: bytes) -> tuple[npt.NDArray[np.uint8], bytes]:
        """A picture of this child's as a new BGR frame, and the picture itself (handed on with the frame: the
        codec codes it); any thread may call it (it reads only the size)."""
        return yuv.to_bgr(raw, self.info.width, self.info.height), raw

    def _finish(self, partial: int) -> None:
        """Log how the child ended: quietly at a clean end, with its last words otherwise."""
        process = self._process
        if process is None:
            return
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if partial:
            log.warning(
                "%s: the last picture was cut short (%d of %d bytes)", self._what, partial, self._size
            )
        if code != 0 and self._interrupted:
            log.info(
                "%s: ffmpeg stopped after %d frames (the connection was abandoned)", self._what, self._frames
            )
        elif code != 0:
            log.warning(
                "%s: ffmpeg exited with %d after %d frames: %s", self._what, code, self._frames, self.said()
            )

    def _listen(self, pipe: IO[bytes] | None) -> None:
        """Keep the child's last messages (a live stream may log decoding errors for days: none is kept
        beyond the last few) and log each at debug level; ends when the child does."""
        if pipe is None:
            return
        with pipe:
            for raw in pipe:
                line = masked(raw.decode("utf-8", "replace").strip(), self._target)
                if line:
                    log.debug("%s: ffmpeg: %s", self._what, line)
                    with self._said_lock:
                        self._said.append(line)

    def said(self) -> str:
        """The end of what the child wrote to stderr (its error messages), on one line."""
        process = self._process
        if process is None or process.poll() is not None:
            self._listener.join(1.0)  # the child has ended: its last words are on their way
        with self._said_lock:
            return " | ".join(self._said)[-_STDERR_TAIL:]

    def interrupt(self) -> None:
        """Kill the child from another thread: the reading thread's ``read()`` then ends with no frame (the pipe
        closes) and that thread releases the capture. For a live reader abandoning a stalled connection."""
        self._interrupted = True
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()

    def release(self) -> None:
        """Stop the child (if it still runs) and free its pipes; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._listener.join(1.0)


def _hand_over(process: subprocess.Popen[bytes], script: str) -> None:
    """Write the input script to the child's stdin and close it (a few hundred bytes: the pipe takes them
    whether or not the child has started reading). A child that died at once is reported by ``prime()``."""
    stdin = process.stdin
    assert stdin is not None
    try:
        stdin.write(script.encode())
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            stdin.close()


def picture_of(capture: object) -> bytes | None:
    """The yuv420p picture of the frame ``capture`` read last, when it is an ffmpeg child's (else None)."""
    return capture.picture if isinstance(capture, FfmpegCapture) else None


def rtsp_options(read_timeout_s: float) -> list[str]:
    """Input options for an RTSP camera: TCP (as for OpenCV: ``stream.py`` says why), a socket timeout, so
    that a silent camera ends the child, and half a second of analysis instead of FFmpeg's 5 s (a camera's
    SDP already says the codec and size: the probe and the child then open in about 0.9 s each instead of
    2.9). Not ``-fflags nobuffer``: it drops the pictures read during that analysis; the reader catches up
    with the live picture on its own."""
    timeout = "-timeout" if _major_version() >= 5 else "-stimeout"  # FFmpeg 5 renamed it
    return ["-rtsp_transport", "tcp", timeout, str(round(read_timeout_s * 1e6)), "-analyzeduration", "500000"]


def _widen_pipe(pipe: IO[bytes] | None, picture_bytes: int) -> None:
    """Let the pipe hold a whole picture (Linux: up to /proc/sys/fs/pipe-max-size, 1 MiB by default), so that
    the child decodes the next picture while this process converts and codes the last one, instead of waiting
    for it 64 kB at a time. Best effort: a smaller pipe only costs that overlap."""
    if pipe is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(picture_bytes, 1 << 20))
    except OSError:
        pass


def open_capture(target: str, input_options: list[str], timeout_s: float, what: str) -> FfmpegCapture:
    """Probe ``target`` and start its child; ``CaptureError`` when ffmpeg is missing or the video unsuited."""
    if not available():
        raise CaptureError(
            f"{what}: decoder = 'ffmpeg' needs ffmpeg and ffprobe on PATH (Debian: apt install ffmpeg)"
        )
    try:
        info = probe(target, input_options, timeout_s)
    except CaptureError as e:
        raise CaptureError(f"{what}: {e}") from e
    why = unsuitable(info)
    if why is not None:
        raise CaptureError(
            f"{what}: ffmpeg would have to convert its pictures ({why}); use decoder = 'opencv'"
        )
    return FfmpegCapture(target, info, input_options, what)


def start(
    target: str, options: list[str], timeout_s: float, what: str, decoder: str, *, unreadable_falls_back: bool
) -> FfmpegCapture | None:
    """The child ``decoder`` asks for, or ``None`` where OpenCV is to decode.

    ``"ffmpeg"``: the child, or ``CaptureError`` saying why it cannot be. ``"opencv"``: ``None``. ``"auto"``:
    ``None`` where ffmpeg is missing or the pictures are not limited-range yuv420p (logged), or, with
    ``unreadable_falls_back``, where ffprobe cannot read the target (a file OpenCV may still open; a camera that
    does not answer does not answer OpenCV either, so for a camera that is raised).
    """
    if decoder == "opencv":
        return None
    if decoder == "ffmpeg":
        return open_capture(target, options, timeout_s, what)
    if not available():
        log.debug("%s: decoded by OpenCV (ffmpeg is not installed)", what)
        return None
    try:
        info = probe(target, options, timeout_s)
    except CaptureError as e:
        if not unreadable_falls_back:
            raise CaptureError(f"{what}: {e}") from e
        log.info("%s: decoded by OpenCV (%s)", what, e)
        return None
    why = unsuitable(info)
    if why is not None:
        log.info("%s: decoded by OpenCV (%s)", what, why)
        return None
    return FfmpegCapture(target, info, options, what)
