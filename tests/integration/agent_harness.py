"""Run the real agent CLI as a subprocess, and record what reaches the broker with a plain paho client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.codec.decoder import FrameDecoder
from agent.codec.wire import Record, unpack_record
from agent.transport.chunks import Reassembler

REPO = Path(__file__).resolve().parents[2]


def write_config(
    path: Path,
    *,
    port: int,
    spool: Path,
    capture: str,
    camera: str = "cam1",
    extra_agent: str = "",
    codec: str = "",
    mqtt_extra: str = "",
    spool_max_bytes: int = 256 * 1024 * 1024,
    seqs_from_zero: bool = True,
) -> Path:
    """An agent config; ``seqs_from_zero`` gives the spool a history that starts at seq 0.

    A spool without history starts at the clock in microseconds (``agent.runtime.agent.first_seq``); the tests
    that count frames by seq are easier to read from 0, and one test checks the fresh-spool start itself.
    """
    if seqs_from_zero and not (spool / "state.json").exists():
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        (spool / "state.json").write_text('{"next_seq": 0}')
    path.write_text(
        f"""
[agent]
camera_id = "{camera}"
site = "lab"
stats_interval_s = 1
{extra_agent}

[capture]
{capture}

[codec]
{codec}

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_max_s = 2
{mqtt_extra}

[spool]
directory = "{spool}"
max_bytes = {spool_max_bytes}
"""
    )
    return path


class AgentProcess:
    """``python -m agent run --config FILE`` with its stderr in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        return self

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def terminate(self, timeout_s: float = 40.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            time.sleep(0.1)
        raise AssertionError(
            f"{needle!r} not in the agent's log within {timeout_s} s:\n{self.text()[-3000:]}"
        )

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Recorder:
    """A persistent-session QoS 1 subscriber: the broker keeps what it misses while disconnected."""

    port: int
    topic: str = "cctv/#"
    client_id: str = "test-recorder"
    records: dict[int, Record] = field(default_factory=dict)
    arrivals: list[int] = field(default_factory=list)
    status: list[bytes] = field(default_factory=list)
    stats: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reassembler: Reassembler = field(default_factory=Reassembler)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)

    def start(self) -> Recorder:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/status"):
            self.status.append(message.payload)
            return
        if message.topic.endswith("/stats"):
            self.stats.append(message.payload)
            return
        if not message.topic.endswith("/frame"):
            return
        data = self._reassembler.feed(message.topic, message.payload)
        if data is None:
            return
        record = unpack_record(data)
        with self._lock:
            self.arrivals.append(record.header.seq)
            self.records.setdefault(record.header.seq, record)

    def seqs(self) -> set[int]:
        with self._lock:
            return set(self.records)

    def wait_for(self, predicate: Callable[[set[int]], bool], timeout_s: float) -> set[int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seqs = self.seqs()
            if predicate(seqs):
                return seqs
            time.sleep(0.1)
        return self.seqs()

    def decode_all(self) -> dict[int, npt.NDArray[np.uint8]]:
        """Reconstruct every received frame in seq order, verifying each frame hash."""
        decoder = FrameDecoder()
        with self._lock:
            ordered = sorted(self.records.items())
        return {seq: decoder.decode(record) for seq, record in ordered}


def write_collector_config(path: Path, *, port: int, root: Path, client_id: str = "test-collector") -> Path:
    path.write_text(
        f'[collector]\narchive_root = "{root}"\n\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f'client_id = "{client_id}"\nreconnect_max_s = 2\n'
    )
    return path


class CollectorProcess(AgentProcess):
    """``python -m agent collect --config FILE``."""

    def start(self) -> CollectorProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "collect",
                    "--config",
                    str(self.config),
                    "--stats-interval",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        return self


def archived_seqs(root: Path, site: str = "lab", camera: str = "cam1") -> list[int]:
    """Seqs the archive has committed for one camera, in index order (empty before the first record)."""
    import sqlite3

    from agent.archive.reader import CameraReader

    if not (root / site / camera / "index.sqlite").exists():
        return []
    try:
        with CameraReader(root, site, camera) as reader:
            return [row.seq for row in reader.rows()]
    except sqlite3.OperationalError:  # the collector is creating the index right now
        return []


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()
