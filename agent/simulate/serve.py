"""Serve simulated (or any) frames as a real RTSP stream and as HTTP MJPEG.

RTSP comes from GStreamer's RTSP server (``gst-rtsp-server``), the same server many cameras and
NVRs embed, so the agent's tests talk to a real server and not to a mock. Its Python bindings
(``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``) exist for the system Python only, so the server runs
as its own process: ``/usr/bin/python3 -m agent.simulate.serve rtsp --clip clip.mp4 --port N``.
That process needs nothing but ``gi``: the frames are first encoded to an H.264 file by ffmpeg in
the calling (venv) process, and the server streams that file. This module therefore imports only
the standard library at the top.

Each RTSP client gets its own playback of the clip from the start (the media is not shared), so a
client that reconnects sees frames again. The stream ends with the clip: make it as long as the
longest connection needs.

MJPEG over HTTP (``multipart/x-mixed-replace``, what cheap IP cameras serve) needs no GStreamer and
runs in any Python with numpy and OpenCV: ``python -m agent.simulate.serve mjpeg --port N``.

``ServerProcess`` runs either server as a child process that a test can pause (SIGSTOP: the TCP
connection stays up but goes silent), kill, and restart on the same port.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from agent.capture.base import Image
    from agent.simulate.scene import Scene

from agent.errors import CaptureError
from agent.stopsignals import on_stop_signals
from agent.urls import redact, with_password

log = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
"""The interpreter that has GStreamer's bindings (Debian's ``python3-gi``)."""
REPO_ROOT = Path(__file__).resolve().parents[2]
BOUNDARY = "cctvframe"


def encode_h264(frames: Iterable[Image], path: Path, fps: float, *, keyint_s: float = 1.0) -> int:
    """Encode BGR frames to an H.264 MP4 with ffmpeg; return the number of frames written.

    A key frame every ``keyint_s`` lets a client that (re)connects show a picture quickly; no
    B-frames (``zerolatency``), as live cameras do.
    """
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to encode")
    height, width = first.shape[:2]
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-g", str(max(1, round(fps * keyint_s))), "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errors)
        assert proc.stdin is not None
        count = 0
        try:
            for frame in itertools.chain([first], it):
                if frame.shape != first.shape:
                    raise ValueError(f"frame {count} is {frame.shape}, the clip is {first.shape}")
                proc.stdin.write(frame.tobytes())
                count += 1
        finally:
            proc.stdin.close()
            proc.wait(120)
        if proc.returncode != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()
            raise CaptureError(f"ffmpeg failed to encode {path}: {message}")
    return count


RTSP_PASSWORD_ENV = "CCTV_RTSP_SERVER_PASSWORD"  # noqa: S105 — the variable's name
"""The RTSP server child's password (with ``--user``): in its environment, not on its command line."""


def run_rtsp_server(
    clip: Path,
    port: int,
    path: str = "/cam",
    *,
    host: str = "127.0.0.1",
    tcp_only: bool = True,
    stop: threading.Event | None = None,
    credentials: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve the H.264 MP4 ``clip`` at ``rtsp://host:port/path`` until ``stop`` is set or SIGTERM.

    Needs GStreamer's Python bindings (system Python). ``tcp_only`` refuses UDP transport, so a
    client that does not ask for TCP fails instead of silently using UDP. ``credentials`` (user,
    password): the stream asks for them with basic authentication, as most cameras do. ``tls``
    (certificate, key; PEM files): RTSPS, at ``rtsps://``, as some cameras offer (UniFi's, say).
    """
    import gi  # type: ignore[import-not-found]  # only the system Python has it

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # type: ignore[import-not-found]

    if not clip.is_file():
        raise FileNotFoundError(f"RTSP clip {clip} does not exist")
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = str(clip).replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'
    )
    factory.set_shared(False)
    if tcp_only:
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    if credentials is not None or tls is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        if credentials is not None:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(*credentials), token)
        else:
            auth.set_default_token(token)  # anyone may watch; the auth object only carries the certificate
        if tls is not None:
            auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(str(tls[0]), str(tls[1])))
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        for permission in ("media.factory.access", "media.factory.construct"):
            permissions.add_permission_for_role("viewer", permission, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(path, factory)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        raise OSError(f"RTSP server could not listen on {host}:{port}")

    def poll_stop() -> bool:
        if stop is not None and stop.is_set():
            loop.quit()
            return False
        return True

    GLib.timeout_add(500, poll_stop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, lambda: loop.quit() or False)
    log.info("serving %s at %s://%s:%d%s", clip, "rtsp" if tls is None else "rtsps", host, port, path)
    loop.run()


class _MjpegHub:
    """One producer thread encodes the current frame; every client thread sends what it finds.

    ``cond`` guards ``jpeg`` and ``seq``: the producer writes them, client handler threads read.
    """

    def __init__(self, frames: Iterator[Image], fps: float, quality: int, stop: threading.Event) -> None:
        self.cond = threading.Condition()
        self.jpeg = b""
        self.seq = 0
        self.ended = False
        self.stop = stop
        self._frames = frames
        self._fps = fps
        self._quality = quality

    def produce(self) -> None:
        import cv2

        period = 1.0 / self._fps
        next_at = time.monotonic()
        for image in self._frames:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
            if not ok:
                raise CaptureError("MJPEG server: JPEG encoding failed")
            with self.cond:
                self.jpeg = buf.tobytes()
                self.seq += 1
                self.cond.notify_all()
            next_at = max(next_at + period, time.monotonic() - period)
            while (left := next_at - time.monotonic()) > 0 and not self.stop.wait(min(1.0, left)):
                pass
            if self.stop.is_set():
                break
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def next_after(self, seq: int) -> tuple[int, bytes] | None:
        with self.cond:
            while not self.stop.is_set():
                if self.seq > seq:
                    return self.seq, self.jpeg
                if self.ended:
                    return None
                self.cond.wait(1.0)
        return None


def _realtime_scene(scene: Scene) -> Iterator[Image]:
    """Scene frames indexed by wall time since start, as a live camera produces them."""
    start = time.monotonic()
    while True:
        yield scene.frame(int((time.monotonic() - start) * scene.settings.fps))


def run_mjpeg_server(
    frames: Scene | Iterable[Image],
    port: int,
    *,
    fps: float = 10.0,
    host: str = "127.0.0.1",
    path: str = "/stream.mjpg",
    quality: int = 85,
    stop: threading.Event | None = None,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Serve frames as MJPEG at ``http://host:port/path`` until ``stop`` is set; with ``tls`` (certificate,
    key: PEM files) at ``https://``.

    A ``Scene`` is played in real time from frame 0; other iterables are sent at ``fps`` and the
    stream ends with them. Blocks; run it on a thread of its own when embedding it.
    """
    from agent.simulate.scene import Scene

    stop = stop if stop is not None else threading.Event()
    source = _realtime_scene(frames) if isinstance(frames, Scene) else iter(frames)
    hub = _MjpegHub(source, fps, quality, stop)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != path:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            seq = 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while (got := hub.next_after(seq)) is not None:
                    seq, jpeg = got
                    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        # The handshake runs in the handler's thread, so a client that stalls in it holds up no other.
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        scheme = "https"
    producer = threading.Thread(target=hub.produce, name="mjpeg-producer", daemon=True)
    producer.start()

    def shut_down_on_stop() -> None:
        stop.wait()
        httpd.shutdown()

    watcher = threading.Thread(target=shut_down_on_stop, name="mjpeg-stop", daemon=True)
    watcher.start()
    log.info("serving MJPEG at %s://%s:%d%s", scheme, host, port, path)
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        httpd.server_close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server in a child process that can be paused, killed and restarted on the same port."""

    def __init__(
        self,
        argv: Sequence[str],
        url: str,
        host: str,
        port: int,
        *,
        ready_timeout_s: float = 15.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env or {})
        """Added to the child's environment (a password: the environment is readable by its owner only)."""
        self.url = url
        self.host = host
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self.log_path = Path(tempfile.mkstemp(prefix="cctv-server-", suffix=".log")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        env = dict(os.environ) | self.env
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise CaptureError(
                    f"{redact(self.url)}: server exited with {self._proc.returncode}: {self.log_text()}"
                )
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        self.kill()
        raise CaptureError(f"{redact(self.url)}: server did not listen within {self.ready_timeout_s} s")

    def log_text(self) -> str:
        """The end of the server's output, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise CaptureError(f"{self.url}: server not started")
        return self._proc.pid

    def pause(self) -> None:
        """Freeze the server: connections stay open and go silent, as with a hung camera."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """End the server abruptly (SIGKILL), as with a camera losing power."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def restart(self) -> None:
        """Kill if running, then start again on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Ask politely, then insist."""
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGCONT)
            self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_rtsp(
    frames: Scene | Iterable[Image],
    port: int,
    path: str = "/cam",
    fps: float = 10.0,
    *,
    clip: Path | None = None,
    duration_s: float = 30.0,
    host: str = "127.0.0.1",
    tcp_only: bool = True,
    credentials: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> ServerProcess:
    """Encode ``frames`` (``duration_s`` of a ``Scene``) to ``clip``; serve it over RTSP from a child process.

    ``clip`` defaults to a temporary file next to the server log; ``credentials`` (user, password): clients
    must give them; ``tls`` (certificate, key): serve RTSPS. Returns the started process; ``close()`` it when
    done.
    """
    from agent.simulate.scene import Scene

    if clip is None:
        clip = Path(tempfile.mkdtemp(prefix="cctv-rtsp-")) / "clip.mp4"
    if isinstance(frames, Scene):
        fps = frames.settings.fps
        frames = (frames.frame(i) for i in range(max(1, round(duration_s * fps))))
    encode_h264(frames, clip, fps)
    return rtsp_process(
        clip, port, path, host=host, tcp_only=tcp_only, credentials=credentials, tls=tls
    ).start()


def rtsp_process(
    clip: Path,
    port: int,
    path: str = "/cam",
    *,
    host: str = "127.0.0.1",
    tcp_only: bool = True,
    credentials: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> ServerProcess:
    """A (not yet started) RTSP server process for an existing H.264 MP4 clip; with ``credentials`` it asks
    for them and its URL carries them (``rtsp://user:password@host...``). The password reaches the child in
    its environment (``RTSP_PASSWORD_ENV``), not on its command line. With ``tls`` (certificate and key PEM
    files) it serves RTSPS and its URL starts ``rtsps://``."""
    argv = [SYSTEM_PYTHON, "-m", "agent.simulate.serve", "rtsp", "--clip", str(clip), "--port", str(port)]
    argv += ["--path", path, "--host", host] + ([] if tcp_only else ["--allow-udp"])
    scheme = "rtsp" if tls is None else "rtsps"
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    url = f"{scheme}://{host}:{port}{path}"
    env = {}
    if credentials is not None:
        argv += ["--user", credentials[0]]
        env[RTSP_PASSWORD_ENV] = credentials[1]
        url = with_password(
            f"{scheme}://{quote(credentials[0], safe='')}@{host}:{port}{path}", credentials[1]
        )
    return ServerProcess(argv, url, host, port, env=env)


def mjpeg_process(
    port: int,
    *,
    width: int = 640,
    height: int = 360,
    fps: float = 10.0,
    seed: int = 1,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
) -> ServerProcess:
    """A (not yet started) MJPEG server process playing a simulated scene in real time; with ``tls``
    (certificate and key PEM files) over HTTPS."""
    argv = [sys.executable, "-m", "agent.simulate.serve", "mjpeg", "--port", str(port), "--host", host]
    argv += ["--width", str(width), "--height", str(height), "--fps", str(fps), "--seed", str(seed)]
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    scheme = "http" if tls is None else "https"
    return ServerProcess(argv, f"{scheme}://{host}:{port}/stream.mjpg", host, port)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the server child processes (not the agent's CLI)."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.simulate.serve", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    rtsp = sub.add_parser("rtsp", help="serve an H.264 MP4 clip over RTSP (system Python with gi)")
    rtsp.add_argument("--clip", type=Path, required=True)
    rtsp.add_argument("--allow-udp", action="store_true", help="also offer UDP transport")
    rtsp.add_argument(
        "--user",
        help=f"ask clients for this user (basic authentication) and the password in ${RTSP_PASSWORD_ENV}",
    )
    mjpeg = sub.add_parser("mjpeg", help="serve a simulated scene as HTTP MJPEG")
    mjpeg.add_argument("--width", type=int, default=640)
    mjpeg.add_argument("--height", type=int, default=360)
    mjpeg.add_argument("--fps", type=float, default=10.0)
    mjpeg.add_argument("--seed", type=int, default=1)
    mjpeg.add_argument("--quality", type=int, default=85)
    for p in (rtsp, mjpeg):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument(
            "--tls-cert", type=Path, help="serve over TLS with this certificate (PEM; with --tls-key)"
        )
        p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    rtsp.add_argument("--path", default="/cam")
    mjpeg.add_argument("--path", default="/stream.mjpg")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key come together")
    tls = None if args.tls_cert is None else (args.tls_cert, args.tls_key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.kind == "rtsp":
        password = os.environ.get(RTSP_PASSWORD_ENV)
        if args.user is not None and not password:
            parser.error(f"--user needs the password in ${RTSP_PASSWORD_ENV}")
        credentials = None if args.user is None or password is None else (args.user, password)
        run_rtsp_server(
            args.clip,
            args.port,
            args.path,
            host=args.host,
            tcp_only=not args.allow_udp,
            credentials=credentials,
            tls=tls,
        )
        return 0
    from agent.simulate.scene import Scene, SceneSettings

    stop = threading.Event()
    on_stop_signals(lambda _signal: stop.set(), [signal.SIGTERM])
    settings = SceneSettings(seed=args.seed, width=args.width, height=args.height, fps=args.fps)
    run_mjpeg_server(
        Scene(settings),
        args.port,
        fps=args.fps,
        host=args.host,
        path=args.path,
        quality=args.quality,
        stop=stop,
        tls=tls,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
