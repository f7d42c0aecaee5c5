"""``simulate`` (a camera without hardware) and ``demo`` (the whole job, once, with a report)."""

from __future__ import annotations

import argparse
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.cli.args import COUNT, PORT, POSITIVE, float_in, int_in
from agent.errors import CctvError
from agent.png import write_png
from agent.progress import Progress
from agent.simulate.scene import MAX_NOISE, SIDE_RANGE
from agent.stopsignals import on_stop_signals
from agent.urls import redact

SIDE = int_in(*SIDE_RANGE)
NOISE = float_in(0, MAX_NOISE)
SIDES = f"pixels, {SIDE_RANGE[0]}..{SIDE_RANGE[1]}"
NOISES = f"0..{MAX_NOISE:g}"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="a deterministic fixed-camera scene (or looped real footage): as PNG files, RTSP or HTTP MJPEG",
        description="Produce the seeded simulated scene (textured background, moving objects, lighting drift, "
        "day/night, sensor noise, burned-in clock) or replay real footage in a loop. Write frames as PNG "
        "(--out), or serve them as a real stream (--serve rtsp|mjpeg) until Ctrl-C. The agent itself can film the "
        'scene in-process: capture.kind = "simulated" in config.toml.',
        epilog="examples:\n  cctv-agent simulate --out frames/ --frames 100\n"
        "  cctv-agent simulate --serve mjpeg --port 8080\n"
        "  cctv-agent simulate --serve rtsp --port 8554 --replay clip.avi\n"
        "  cctv-agent simulate --serve rtsp --user viewer --password-file camera-password\n"
        "  cctv-agent simulate --serve rtsp --tls-cert camera.crt --tls-key camera.key   # rtsps://",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=1, help="scene seed (default: %(default)s)")
    p.add_argument("--width", type=SIDE, default=1280, help=f"{SIDES} (default: %(default)s)")
    p.add_argument("--height", type=SIDE, default=720, help=f"{SIDES} (default: %(default)s)")
    p.add_argument("--fps", type=POSITIVE, default=10.0, help="frames a second (default: %(default)s)")
    p.add_argument(
        "--noise", type=NOISE, default=2.0, help=f"sensor noise sigma, {NOISES} (default: %(default)s)"
    )
    p.add_argument("--no-clock", action="store_true", help="no burned-in clock")
    p.add_argument("--replay", type=Path, help="loop this video file or image folder instead of the scene")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="write --frames frames as PNG into this directory")
    out.add_argument("--serve", choices=["rtsp", "mjpeg"], help="serve a live stream on --port")
    p.add_argument("--frames", type=COUNT, default=100, help="with --out: how many (default: %(default)s)")
    p.add_argument("--port", type=PORT, default=8554, help="with --serve (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--duration",
        type=POSITIVE,
        default=60.0,
        help="rtsp: seconds of scene in the served clip (default: 60)",
    )
    p.add_argument("--user", help="rtsp: ask clients for this user and the password in --password-file")
    p.add_argument(
        "--password-file", type=Path, help="rtsp: a file holding the password (as capture.password_file)"
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        help="serve RTSPS or HTTPS with this certificate (PEM, with --tls-key); the agent checks it when "
        "capture.ca_file names it or its CA",
    )
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser(
        "demo",
        help="run simulated camera -> agent -> Mosquitto -> collector -> archive and print a report",
        description="Start a private Mosquitto and a collector, film the simulated scene with the agent for "
        "--duration seconds, then verify that every archived frame reconstructs bit for bit (or within "
        "--tolerance) and print frames, keys, bytes on the wire, ratio vs raw and vs PNG, and max error. Also "
        "writes WORKDIR/report.png: bytes per frame with key frames marked, and a contact sheet.",
    )
    p.add_argument("--workdir", type=Path, default=Path("out/demo"), help="(default: %(default)s)")
    p.add_argument(
        "--duration", type=POSITIVE, default=30.0, help="seconds of filming (default: %(default)s)"
    )
    p.add_argument("--width", type=SIDE, default=960, help=f"{SIDES} (default: %(default)s)")
    p.add_argument("--height", type=SIDE, default=540, help=f"{SIDES} (default: %(default)s)")
    p.add_argument("--fps", type=POSITIVE, default=10.0, help="frames a second (default: %(default)s)")
    p.add_argument("--tolerance", type=int, default=0, help="0 = exact (default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--noise",
        type=NOISE,
        default=2.0,
        help=f"sensor noise sigma of the scene, {NOISES} (default: %(default)s)",
    )
    p.set_defaults(handler=cmd_demo)


def _frames(args: argparse.Namespace) -> Iterator[npt.NDArray[np.uint8]]:
    if args.replay is not None:
        from agent.capture.files import open_path

        with open_path(args.replay, loop=True) as source:
            while (frame := source.read()) is not None:
                yield frame.image
        return
    from agent.simulate.scene import Scene

    scene = Scene(_scene_settings(args))
    for index in itertools.count():
        yield scene.frame(index)


def _scene_settings(args: argparse.Namespace) -> Any:
    from agent.simulate.scene import SceneSettings

    return SceneSettings(
        seed=args.seed,
        width=args.width,
        height=args.height,
        fps=args.fps,
        clock=not args.no_clock,
        noise=args.noise,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    if (args.user is not None or args.password_file is not None) and args.serve != "rtsp":
        raise CctvError("--user and --password-file are for --serve rtsp")
    if (args.tls_cert is not None or args.tls_key is not None) and args.serve is None:
        raise CctvError("--tls-cert and --tls-key are for --serve")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CctvError("--tls-cert and --tls-key go together")
    for pem in (args.tls_cert, args.tls_key):
        if pem is not None and not pem.is_file():
            raise CctvError(f"{pem}: no such file")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with Progress(args.frames, "simulating") as bar:
            for index, image in zip(range(args.frames), _frames(args), strict=False):
                write_png(args.out / f"{index:08d}.png", image)
                bar.advance()
        print(f"{args.out}: {args.frames} frames")
        return 0
    tls = None if args.tls_cert is None else (args.tls_cert, args.tls_key)
    stop = threading.Event()
    on_stop_signals(lambda _signal: stop.set())
    if args.serve == "mjpeg":
        from agent.simulate.scene import Scene
        from agent.simulate.serve import run_mjpeg_server

        frames = _frames(args) if args.replay else Scene(_scene_settings(args))
        scheme = "http" if tls is None else "https"
        print(f"serving MJPEG at {scheme}://{args.host}:{args.port}/stream.mjpg (Ctrl-C stops)", flush=True)
        run_mjpeg_server(frames, args.port, fps=args.fps, host=args.host, stop=stop, tls=tls)
        return 0
    from agent.simulate.serve import serve_rtsp

    count = max(1, round(args.duration * args.fps))
    with serve_rtsp(
        itertools.islice(_frames(args), count),
        args.port,
        fps=args.fps,
        host=args.host,
        credentials=_credentials(args),
        tls=tls,
    ) as server:
        kind = "RTSP" if tls is None else "RTSPS"
        print(f"serving {kind} at {redact(server.url)} (Ctrl-C stops)", flush=True)
        while not stop.wait(1.0):
            pass
    return 0


def _credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    """``--user`` and the password in ``--password-file``, or None when neither is given."""
    if args.user is None and args.password_file is None:
        return None
    if args.user is None or args.password_file is None:
        raise CctvError("--user and --password-file go together")
    try:
        password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CctvError(f"{args.password_file}: cannot read the password: {e}") from e
    if not password:
        raise CctvError(f"{args.password_file}: the file is empty")
    return args.user, password


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo.run import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            workdir=args.workdir,
            duration_s=args.duration,
            width=args.width,
            height=args.height,
            fps=args.fps,
            tolerance=args.tolerance,
            seed=args.seed,
            noise=args.noise,
        )
    )
