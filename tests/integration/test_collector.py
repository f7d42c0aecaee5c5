"""The collector against a real Mosquitto: archive, duplicates, quarantine, chunks, shared groups, kill -9."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.archive.reader import CameraReader
from agent.codec.encoder import FrameEncoder
from agent.codec.wire import FIXED_SIZE, pack_record
from agent.collector import Collector, Quarantine, Reason
from agent.collector import service as collector_service
from agent.collector.service import STAGING_DIR
from agent.config.models import CollectorConfig, CollectorSection, MqttSection, TlsSection
from agent.simulate.scene import Scene, SceneSettings
from agent.transport import DeliveryResult, MqttSettings, Publisher
from agent.transport.chunks import iter_chunks
from tests.fixtures.broker import MqttBroker

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 15.0
SITE = "depot"
T0_NS = 1_700_000_000_000_000_000


def make_records(
    camera: str, count: int, *, seed: int = 3, first_seq: int = 0, t0_ns: int = T0_NS
) -> list[bytes]:
    """Real encoder output for a small simulated scene (5-6.5 KB a record: three or four chunks at 2 KiB)."""
    scene = Scene(SceneSettings(width=64, height=48, seed=seed))
    encoder = FrameEncoder(camera, first_seq=first_seq)
    return [pack_record(encoder.encode(scene.frame(i), t0_ns + i * 100_000_000)) for i in range(count)]


def archived(root: Path, camera: str, site: str = SITE) -> dict[int, bytes]:
    """What a reader sees committed in the archive for one camera (empty before its first record)."""
    if not (root / site / camera / "index.sqlite").exists():
        return {}
    try:
        with CameraReader(root, site, camera) as reader:
            return {row.seq: reader.read_bytes(row) for row in reader.rows()}
    except sqlite3.OperationalError:  # the writer is creating the index right now
        return {}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def collector_config(broker: MqttBroker, root: Path, **collector: Any) -> CollectorConfig:
    mqtt_keys = {k: collector.pop(k) for k in ("client_id", "protocol") if k in collector}
    return CollectorConfig(
        collector=CollectorSection(archive_root=root, **collector),
        mqtt=MqttSection(
            host=broker.host,
            port=broker.port,
            client_id=mqtt_keys.get("client_id", "collector-1"),
            protocol=mqtt_keys.get("protocol", "5"),
            reconnect_min_s=1,
            reconnect_max_s=2,
        ),
    )


class Running:
    """A collector in a thread of the test process."""

    def __init__(self, config: CollectorConfig, **options: Any) -> None:
        self.collector = Collector(config, **{"stats_interval_s": 5.0} | options)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.collector.link.wait_subscribed(WAIT_S), "collector did not subscribe"

    def _run(self) -> None:
        try:
            self.collector.run(self.stop_event)
        except BaseException as e:  # reported by stop()
            self.error = e

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "collector did not stop within 10 s"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_collector() -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(config: CollectorConfig, **options: Any) -> Running:
        running.append(Running(config, **options))
        return running[-1]

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def publish_all(
    broker: MqttBroker, camera: str, records: list[bytes], *, pace_s: float = 0.0, **settings: Any
) -> None:
    """Publish with the agent's own Publisher and wait until the broker has acknowledged every record."""
    done: dict[int, DeliveryResult] = {}
    finished = threading.Condition()

    def on_done(seq: int, result: DeliveryResult) -> None:
        with finished:
            done[seq] = result
            finished.notify_all()

    values: dict[str, Any] = {"host": broker.host, "port": broker.port, "client_id": f"agent-{camera}"}
    pub = Publisher(MqttSettings(site=SITE, camera=camera, **values | settings))
    pub.start()
    try:
        assert pub.wait_connected(WAIT_S), pub.last_error
        for seq, record in enumerate(records):
            pub.publish_record(seq, record, on_done)
            time.sleep(pace_s)
        with finished:
            assert finished.wait_for(lambda: len(done) == len(records), WAIT_S), "broker did not ack all"
    finally:
        pub.stop(timeout_s=2)
    assert all(r.ok for r in done.values()), [r for r in done.values() if not r.ok]


def raw_publish(broker: MqttBroker, messages: list[tuple[str, bytes]]) -> None:
    """A plain paho client: publishes what no Publisher would (odd topics, garbage)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()


def quarantined(directory: Path) -> list[dict[str, Any]]:
    sidecars = sorted(directory.glob("*.json"))
    assert sorted(p.with_suffix(".bin") for p in sidecars) == sorted(directory.glob("*.bin"))
    return [json.loads(p.read_text()) for p in sidecars]


# ------------------------------------------------------------------------------------------- archive


def test_published_records_arrive_in_the_archive_once(
    mqtt_broker: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    root = tmp_path / "archive"
    running = start_collector(collector_config(mqtt_broker, root))
    records = make_records("cam1", 12)
    publish_all(mqtt_broker, "cam1", records)
    wait_for("12 records archived", lambda: len(archived(root, "cam1")) == 12)
    # the same records again, as an agent replaying its spool after a restart would send them
    publish_all(mqtt_broker, "cam1", records)
    wait_for("12 duplicates seen", lambda: running.collector.stats.duplicates == 12)
    running.stop()
    assert archived(root, "cam1") == dict(enumerate(records))
    stats = running.collector.stats
    assert (stats.stored, stats.duplicates, stats.quarantined) == (12, 12, 0)
    assert stats.acked == stats.received == 24
    assert not list((root / "quarantine").iterdir())


def test_chunked_records_are_reassembled_and_their_staging_cleared(
    mqtt_broker: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    root = tmp_path / "archive"
    running = start_collector(collector_config(mqtt_broker, root))
    records = make_records("cam1", 10)
    # 2 KiB messages: three or four chunks a record, 30 or more in all, more than Mosquitto's 20 in flight
    publish_all(mqtt_broker, "cam1", records, max_payload_bytes=2048)
    wait_for("10 chunked records archived", lambda: len(archived(root, "cam1")) == 10)
    running.stop()
    assert archived(root, "cam1") == dict(enumerate(records))
    assert running.collector.stats.chunks == running.collector.stats.received >= 30
    assert not list((root / STAGING_DIR).iterdir()), "chunks of archived records are still staged"


def test_chunks_acknowledged_before_a_restart_complete_their_record_after_it(
    mqtt_broker: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    root = tmp_path / "archive"
    config = collector_config(mqtt_broker, root)
    record = make_records("cam1", 1)[0]
    chunks = list(iter_chunks(0, record, len(record) // 3 + 64))  # a chunk's header is under 64 bytes
    assert len(chunks) == 3
    running = start_collector(config)
    raw_publish(mqtt_broker, [("cctv/depot/cam1/frame", c) for c in chunks[:2]])
    wait_for("two chunks acknowledged", lambda: running.collector.stats.acked == 2)
    running.stop()
    # acknowledged, so the broker has forgotten them: only the staging folder holds them now
    assert len(list((root / STAGING_DIR).glob("*.chunk"))) == 2
    raw_publish(mqtt_broker, [("cctv/depot/cam1/frame", chunks[2])])
    running = start_collector(config)
    wait_for("the record, whole", lambda: archived(root, "cam1") == {0: record})
    running.stop()
    assert not list((root / STAGING_DIR).iterdir())


def test_retention_from_the_config_deletes_old_groups_periodically(
    mqtt_broker: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    root = tmp_path / "archive"
    running = start_collector(collector_config(mqtt_broker, root, retention_days=1), retention_interval_s=0.2)
    old = make_records("cam1", 4)  # November 2023: one key group
    new = make_records("cam1", 4, first_seq=4, t0_ns=time.time_ns())  # today: a second group
    publish_all(mqtt_broker, "cam1", old + new)
    wait_for("the old group deleted", lambda: sorted(archived(root, "cam1")) == [4, 5, 6, 7])
    running.stop()
    assert running.collector.stats.stored == 8


# ---------------------------------------------------------------------------------------- quarantine


def _short_header_record() -> bytes:
    body = bytearray(FIXED_SIZE - 4)
    body[0:5] = b"CCTV\x01"
    body[7] = 1  # GRAY8
    struct.pack_into("<I", body, 16, FIXED_SIZE - 4)  # header length 0, the payload the rest
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def test_hostile_and_malformed_messages_end_in_quarantine_inside_the_root(
    mqtt_broker: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    root = tmp_path / "archive"
    running = start_collector(collector_config(mqtt_broker, root))
    good = make_records("cam1", 3)
    corrupted = bytearray(good[1])
    corrupted[len(corrupted) // 2] ^= 0xFF
    other = make_records("cam1", 1, seed=99)[0]  # seq 0 again, other pixels
    dotted = make_records("a..b", 1)[0]
    expected = [
        ("cctv/depot/..%2F/frame", good[0], "topic"),
        ("cctv/depot/.hidden/frame", good[0], "topic"),
        ("cctv/dépôt/cam1/frame", good[0], "topic"),
        ("cctv/VERSION/cam1/frame", good[0], "topic"),  # a file of the archive root
        ("cctv/quarantine/cam1/frame", good[0], "topic"),  # the quarantine folder itself
        ("cctv/a..b/cam1/frame", good[0], "rejected"),  # valid topic id, refused by the archive
        ("cctv/depot/a..b/frame", dotted, "rejected"),
        ("cctv/depot/cam2/frame", good[0], "camera-mismatch"),
        ("cctv/depot/cam1/frame", b"", "malformed"),
        ("cctv/depot/cam1/frame", b"garbage", "malformed"),
        ("cctv/depot/cam1/frame", good[0][:100], "malformed"),
        ("cctv/depot/cam1/frame", bytes(corrupted), "malformed"),
        ("cctv/depot/cam1/frame", b"CCCH" + bytes(40), "malformed"),
        # a valid CRC over a header length shorter than the fixed header: it once raised IndexError, which
        # stopped the collector, and the broker redelivered it to the next one
        ("cctv/depot/cam1/frame", _short_header_record(), "malformed"),
    ]
    raw_publish(mqtt_broker, [("cctv/depot/cam1/frame", good[0])])
    wait_for("first record", lambda: 0 in archived(root, "cam1"))
    raw_publish(mqtt_broker, [(topic, payload) for topic, payload, _ in expected])
    raw_publish(mqtt_broker, [("cctv/depot/cam1/frame", other), ("cctv/depot/cam1/frame", good[2])])
    wait_for("the collector to keep going", lambda: 2 in archived(root, "cam1"))
    running.stop()

    kept = quarantined(root / "quarantine")
    reasons = sorted(k["reason"] for k in kept)
    assert reasons == sorted([r for _, _, r in expected] + ["rejected"])  # + seq 0 with other content
    assert {k["topic"] for k in kept} == {repr(t) for t, _, _ in expected}
    assert running.collector.stats.quarantined == len(expected) + 1
    assert archived(root, "cam1") == {0: good[0], 2: good[2]}
    # nothing was created anywhere but the root: no site named after a hostile id, no file outside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [".collector-staging", "VERSION", SITE, "quarantine"]
    )
    assert sorted(p.name for p in (root / SITE).iterdir()) == ["cam1"]
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve()), path


def test_a_message_that_trips_a_parser_bug_is_quarantined_and_collection_goes_on(
    mqtt_broker: MqttBroker,
    tmp_path: Path,
    start_collector: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A parser that fails other than with WireFormatError (a bug) must not stop the collector: the message
    would stay unacknowledged and stop the next start too. Two such bugs are planted, one in each parsing step
    (reassembly, then the record), each triggered by one message's bytes."""
    root = tmp_path / "archive"
    good = make_records("cam1", 4)
    real_feed = collector_service.Reassembler.feed
    real_unpack = collector_service.unpack_record

    def feed(self: Any, camera_key: str, payload: bytes) -> bytes | None:
        if payload == good[1]:
            raise KeyError("planted")
        return real_feed(self, camera_key, payload)

    def unpack(data: bytes, *args: Any) -> Any:
        if data == good[2]:
            raise IndexError("planted")
        return real_unpack(data, *args)

    monkeypatch.setattr(collector_service.Reassembler, "feed", feed)
    monkeypatch.setattr(collector_service, "unpack_record", unpack)
    running = start_collector(collector_config(mqtt_broker, root))
    raw_publish(mqtt_broker, [("cctv/depot/cam1/frame", record) for record in good])
    wait_for("the last record", lambda: 3 in archived(root, "cam1"))
    running.stop()
    assert archived(root, "cam1") == {0: good[0], 3: good[3]}
    kept = quarantined(root / "quarantine")
    assert [k["reason"] for k in kept] == ["malformed", "malformed"]
    details = sorted(k["detail"] for k in kept)
    assert "IndexError: planted" in details[0]
    assert "KeyError: 'planted'" in details[1]
    assert all("please report" in d for d in details)
    assert running.collector.stats.quarantined == 2


def test_quarantine_names_its_files_itself_and_stops_keeping_at_its_cap(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q", max_bytes=2000)
    topic = repr("cctv/../../etc/passwd\x00/frame")
    kept = [quarantine.keep(b"x" * 500, topic, Reason.MALFORMED, "bad magic") for _ in range(4)]
    quarantine.sync()
    paths = [p for p in kept if p is not None]
    assert 1 <= len(paths) < 4
    assert quarantine.skipped == 4 - len(paths)
    assert quarantine.bytes_held <= 2000
    for path in paths:
        assert path.parent == tmp_path / "q"
        assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-\d{6}-malformed\.bin", path.name), path.name
        assert path.read_bytes() == b"x" * 500
        assert json.loads(path.with_suffix(".json").read_text())["topic"] == topic
    # a second run (same clock second, counter from 1 again) never overwrites what the first kept
    again = Quarantine(tmp_path / "q", max_bytes=10_000)
    assert again.bytes_held == quarantine.bytes_held
    assert again.keep(b"y", topic, Reason.TOPIC, "x") not in paths


# ------------------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_records_published_while_the_collector_is_away_arrive_after_it_returns(
    mqtt_broker: MqttBroker,
    tmp_path: Path,
    start_collector: Callable[..., Running],
    protocol: str,
) -> None:
    root = tmp_path / "archive"
    config = collector_config(mqtt_broker, root, protocol=protocol)
    start_collector(config).stop()  # the broker now holds a session with our subscription
    records = make_records("cam1", 8)
    publish_all(mqtt_broker, "cam1", records, max_payload_bytes=2048)
    assert archived(root, "cam1") == {}
    running = start_collector(config)
    wait_for("records queued by the broker", lambda: len(archived(root, "cam1")) == 8)
    running.stop()
    assert archived(root, "cam1") == dict(enumerate(records))


def test_a_shared_group_stores_every_frame_exactly_once(
    mqtt_broker: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    roots = [tmp_path / "archive-a", tmp_path / "archive-b"]
    running = [
        start_collector(collector_config(mqtt_broker, root, client_id=f"collector-{i}", share_group="g"))
        for i, root in enumerate(roots)
    ]
    records = make_records("cam1", 40)
    publish_all(mqtt_broker, "cam1", records)
    wait_for("40 records in the two archives", lambda: sum(len(archived(r, "cam1")) for r in roots) >= 40)
    time.sleep(0.5)  # a frame stored twice would show up now
    for r in running:
        r.stop()
    a, b = (archived(root, "cam1") for root in roots)
    assert not set(a) & set(b), "a frame was stored by both collectors"
    assert a | b == dict(enumerate(records))
    assert a, "collector 0 got nothing: the subscription was not shared"
    assert b, "collector 1 got nothing: the subscription was not shared"


def test_collector_over_tls_with_a_client_certificate(
    mqtt_broker_tls: MqttBroker, tmp_path: Path, start_collector: Callable[..., Running]
) -> None:
    root = tmp_path / "archive"
    b = mqtt_broker_tls
    tls = TlsSection(enabled=True, ca_file=b.ca_file, cert_file=b.client_cert, key_file=b.client_key)
    config = collector_config(b, root)
    config = replace(config, mqtt=replace(config.mqtt, tls=tls))
    running = start_collector(config)
    records = make_records("cam1", 3)
    publish_all(
        b, "cam1", records, tls=True, ca_file=b.ca_file, cert_file=b.client_cert, key_file=b.client_key
    )
    wait_for("records over TLS", lambda: len(archived(root, "cam1")) == 3)
    running.stop()
    assert archived(root, "cam1") == dict(enumerate(records))


# ------------------------------------------------------------------------------------- the CLI


def test_cli_collector_killed_mid_stream_loses_nothing_and_stops_cleanly_on_sigterm(
    mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    config_file = tmp_path / "collector.toml"
    config_file.write_text(
        f'[collector]\narchive_root = "{root}"\n\n'
        f'[mqtt]\nhost = "{mqtt_broker.host}"\nport = {mqtt_broker.port}\nclient_id = "collector-cli"\n'
        "reconnect_min_s = 1\nreconnect_max_s = 2\n"
    )
    command = [
        sys.executable,
        "-m",
        "agent",
        "collect",
        "--config",
        str(config_file),
        "--stats-interval",
        "1",
    ]

    def start(log_name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log_name).open("wb") as log:
            return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def subscribed(log_name: str) -> bool:
        return "subscribed to" in (tmp_path / log_name).read_text(errors="replace")

    first = start("first.log")
    try:
        wait_for("the first collector to subscribe", lambda: subscribed("first.log"))
        records = make_records("cam1", 120)
        publisher = threading.Thread(
            target=publish_all,
            args=(mqtt_broker, "cam1", records),
            kwargs={"max_payload_bytes": 2048, "pace_s": 0.02},
        )
        publisher.start()
        wait_for("some records archived", lambda: len(archived(root, "cam1")) >= 10)
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        killed_with = len(archived(root, "cam1"))
        publisher.join(WAIT_S)
        assert not publisher.is_alive()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(5)
    assert killed_with < 120, "the collector was killed after the stream, not during it"

    second = start("second.log")
    try:
        wait_for("every record after the restart", lambda: len(archived(root, "cam1")) == 120, 30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(5)
    assert archived(root, "cam1") == dict(enumerate(records))
    log = (tmp_path / "second.log").read_text(errors="replace")
    assert "collector stopped: received=" in log
    assert "Traceback" not in log + (tmp_path / "first.log").read_text(errors="replace")
    assert not list((root / "quarantine").iterdir())
    assert not [p for p in (root / STAGING_DIR).iterdir() if p.suffix == ".chunk"]
    assert [p.name for p in (root / SITE).iterdir()] == ["cam1"]


def test_the_collector_says_ready_without_a_broker_after_its_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that is down must not keep systemd from seeing the collector start (it would be killed)."""
    import socket as socket_module

    from agent.collector import service

    monkeypatch.setattr(service, "READY_WAIT_S", 1.0)
    address = tmp_path / "notify.sock"
    sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    with socket_module.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = CollectorConfig(
        collector=CollectorSection(archive_root=tmp_path / "archive"),
        mqtt=MqttSection(host="127.0.0.1", port=port, client_id="no-broker", reconnect_max_s=1),
    )
    collector = Collector(config)
    stop = threading.Event()
    thread = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    started = time.monotonic()
    thread.start()
    ready, ready_after = "", 0.0
    try:
        while time.monotonic() - started < 10 and not ready:
            with contextlib.suppress(TimeoutError):
                message = sock.recv(4096).decode()
                if "READY=1" in message:
                    ready, ready_after = message, time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)
        sock.close()
    assert "STATUS=waiting for the broker" in ready
    assert ready_after >= 1.0, "READY=1 came before the wait for the subscription ended"
    assert not thread.is_alive()
