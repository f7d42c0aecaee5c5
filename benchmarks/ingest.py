"""How fast one collector files records: frames/s per collector core, for 720p and 1080p records.

The broker is a private Mosquitto on loopback (or ``--broker HOST:PORT``). For each case the collector first
opens its persistent session and leaves; the agent's Publisher then fills the broker's queue with N records
made by the real encoder; then the collector starts again and the clock runs until all N are archived
(verified, stored, fsynced, acknowledged). So the numbers are the collector's alone, not the publisher's:
wall time, and the CPU time of this process (the collector's thread plus paho's) and of the broker.

    .venv/bin/python benchmarks/ingest.py                      # 720p and 1080p, whole and chunked records
    .venv/bin/python benchmarks/ingest.py --source /work/shared/data/pets2009-vtest/vtest.avi --json

Requirement: 200 cameras at one 1080p frame every 10 s = 20 frames/s; ``headroom`` = frames/s per core / 20.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.files import open_path
from agent.codec.encoder import FrameEncoder
from agent.codec.wire import Record, pack_record, unpack_record
from agent.collector import Collector
from agent.config.models import CollectorConfig, CollectorSection, MqttSection
from agent.simulate.scene import Scene, SceneSettings
from agent.transport import DeliveryResult, MqttSettings, Publisher

MOSQUITTO = "/usr/sbin/mosquitto"
REQUIRED_FPS = 20.0  # 200 cameras x one 1080p frame every 10 s
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}
DISTINCT = 10
"""Frames actually encoded per case; the N records are these, re-numbered (the archive files them all)."""
T0_NS = 1_700_000_000_000_000_000


def distinct_frames(size: tuple[int, int], source: Path | None) -> list[np.ndarray[Any, Any]]:
    """DISTINCT frames 10 s apart: the simulated scene (with sensor noise), or a real clip resized."""
    if source is None:
        scene = Scene(SceneSettings(width=size[0], height=size[1], seed=7))
        return [scene.frame(i * 100) for i in range(DISTINCT)]
    frames = []
    with open_path(source) as src:
        while len(frames) < DISTINCT:
            frame = src.read()
            if frame is None:
                break
            frames.append(cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA))
            for _ in range(24):  # every 25th frame: 1 s apart in a 25 fps clip, so they differ
                if src.read() is None:
                    break
    if not frames:
        raise SystemExit(f"{source}: no frames")
    return frames


def make_records(frames: list[np.ndarray[Any, Any]], count: int) -> tuple[list[bytes], int]:
    """``count`` records: the encoder's records of ``frames``, repeated with shifted seqs. Also: keys."""
    encoder = FrameEncoder("bench-cam")
    base = [encoder.encode(f, T0_NS + i * 10_000_000_000) for i, f in enumerate(frames)]
    keys = sum(r.header.key_seq == r.header.seq for r in base)
    out = []
    for n in range(count):
        r = base[n % len(base)]
        shift = (n // len(base)) * len(base)
        h = r.header
        header = replace(
            h,
            seq=h.seq + shift,
            key_seq=h.key_seq + shift,
            ref_seq=h.ref_seq + shift,
            capture_time_ns=h.capture_time_ns + shift * 10_000_000_000,
        )
        out.append(pack_record(Record(header, r.payload)))
    unpack_record(out[-1])  # still valid
    return out, keys


@contextlib.contextmanager
def private_broker() -> Iterator[tuple[str, int, int]]:
    """Mosquitto on a free loopback port with unlimited queues; yields host, port, pid."""
    directory = Path(tempfile.mkdtemp(prefix="cctv-ingest-"))
    directory.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_queued_bytes 0\nlog_dest none\n"
    )
    config.chmod(0o644)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(config)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("mosquitto did not start")
            time.sleep(0.05)
        yield "127.0.0.1", port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(host: str, port: int, records: list[bytes], max_payload: int) -> None:
    done: dict[int, DeliveryResult] = {}
    cond = threading.Condition()

    def on_done(seq: int, result: DeliveryResult) -> None:
        with cond:
            done[seq] = result
            cond.notify_all()

    settings = MqttSettings(
        host=host, port=port, client_id="bench-agent", site="bench", camera="bench-cam",
        max_payload_bytes=max_payload, max_inflight=20,
    )  # fmt: skip
    pub = Publisher(settings)
    pub.start()
    try:
        if not pub.wait_connected(10):
            raise SystemExit(f"publisher: {pub.last_error}")
        for seq, record in enumerate(records):
            pub.publish_record(seq, record, on_done)
        with cond:
            if not cond.wait_for(lambda: len(done) == len(records), 600):
                raise SystemExit("broker did not acknowledge every record")
    finally:
        pub.stop()
    if not all(r.ok for r in done.values()):
        raise SystemExit("some records were refused")


def run_case(
    host: str, port: int, broker_pid: int, records: list[bytes], max_payload: int, inflight: int
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cctv-ingest-archive-", dir="/var/tmp"))
    try:
        config = CollectorConfig(
            collector=CollectorSection(archive_root=root),
            mqtt=MqttSection(host=host, port=port, client_id=f"bench-collector-{time.monotonic_ns()}",
                             max_inflight=inflight),
        )  # fmt: skip
        first = Collector(config)
        stop = threading.Event()
        thread = threading.Thread(target=first.run, args=(stop,))
        thread.start()
        first.link.wait_subscribed(10)
        stop.set()
        thread.join()
        publish(host, port, records, max_payload)

        collector = Collector(config, stats_interval_s=3600)
        stop = threading.Event()
        wall0, cpu0, broker0 = time.perf_counter(), time.process_time(), cpu_s(broker_pid)
        thread = threading.Thread(target=collector.run, args=(stop,))
        thread.start()
        while collector.stats.stored + collector.stats.duplicates < len(records):
            if not thread.is_alive():
                raise SystemExit("collector stopped early")
            time.sleep(0.01)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        broker = cpu_s(broker_pid) - broker0
        stop.set()
        thread.join()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = sum(len(r) for r in records)
    per_core = len(records) / cpu
    return {
        "frames": len(records),
        "record_mb": round(total / len(records) / 1e6, 2),
        "messages": collector.stats.received,
        "batches": collector.stats.batches,
        "wall_s": round(wall, 2),
        "collector_cpu_s": round(cpu, 2),
        "broker_cpu_s": round(broker, 2),
        "frames_per_s": round(len(records) / wall, 1),
        "mb_per_s": round(total / wall / 1e6, 1),
        "frames_per_collector_core_s": round(per_core, 1),
        "headroom_per_core": round(per_core / REQUIRED_FPS, 2),
        "headroom_wall": round(len(records) / wall / REQUIRED_FPS, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=60, help="records per case (default: %(default)s)")
    parser.add_argument("--resolutions", default="720p,1080p", help="comma-separated: 720p, 1080p")
    parser.add_argument(
        "--source", type=Path, default=None, help="a video or image folder instead of the scene"
    )
    parser.add_argument("--broker", default=None, metavar="HOST:PORT", help="an existing broker (e.g. :1883)")
    parser.add_argument(
        "--inflight",
        type=int,
        default=100,
        help="the collector's Receive Maximum (mqtt.max_inflight; default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = []
    with contextlib.ExitStack() as stack:
        if args.broker:
            host, _, port_text = args.broker.rpartition(":")
            host, port, pid = host or "127.0.0.1", int(port_text), 0
        else:
            host, port, pid = stack.enter_context(private_broker())
        for name in args.resolutions.split(","):
            frames = distinct_frames(RESOLUTIONS[name], args.source)
            records, keys = make_records(frames, args.frames)
            for mode, max_payload in (("whole", 16 * 1024 * 1024), ("chunked 256 KiB", 256 * 1024)):
                result = run_case(host, port, pid, records, max_payload, args.inflight)
                results.append({"resolution": name, "messages_as": mode, "keys_of_10": keys, **result})
                if not args.json:
                    r = results[-1]
                    print(
                        f"{name:>5} {mode:<16} {r['frames']} frames of {r['record_mb']} MB: "
                        f"{r['frames_per_s']} frames/s, {r['mb_per_s']} MB/s wall; "
                        f"{r['frames_per_collector_core_s']} frames per collector CPU-second "
                        f"(headroom x{r['headroom_per_core']} over {REQUIRED_FPS:.0f} frames/s; "
                        f"broker {r['broker_cpu_s']} CPU-s)",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
