"""The publisher against a real Mosquitto: delivery, TLS, ACL refusals, chunking, status, outages."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError, PublishError
from agent.transport import DeliveryResult, MqttSettings, Publisher, Reassembler, split_record
from tests.fixtures.broker import BrokerFactory, Certs, MqttBroker

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0


def settings_for(broker: MqttBroker, **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": "agent-cam1",
        "site": "depot",
        "camera": "cam1",
        "reconnect_min_s": 1,
        "reconnect_max_s": 2,
    }
    if broker.tls:
        values |= {
            "tls": True,
            "ca_file": broker.ca_file,
            "cert_file": broker.client_cert,
            "key_file": broker.client_key,
        }
    values.update(overrides)
    return MqttSettings(**values)


def record(seq: int, size: int = 200) -> bytes:
    body = seq.to_bytes(8, "little") * (size // 8 + 1)
    return (b"CCTV" + body)[:size]


@dataclass
class Outcomes:
    """Collects ``on_done`` calls; checks that each seq is reported exactly once."""

    results: dict[int, DeliveryResult] = field(default_factory=dict)
    calls: list[int] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, seq: int, result: DeliveryResult) -> None:
        with self.changed:
            self.calls.append(seq)
            self.results[seq] = result
            self.changed.notify_all()

    def wait(self, *seqs: int, timeout_s: float = WAIT_S) -> dict[int, DeliveryResult]:
        with self.changed:
            assert self.changed.wait_for(lambda: all(s in self.results for s in seqs), timeout_s), (
                f"no on_done for {sorted(set(seqs) - set(self.results))} within {timeout_s} s"
            )
            assert sorted(self.calls) == sorted(set(self.calls)), f"on_done called twice: {self.calls}"
            return {s: self.results[s] for s in seqs}


class Subscriber:
    """A plain paho client on the collector's side, to see what really reached the broker."""

    def __init__(self, broker: MqttBroker, topic: str, *, username: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, broker.users[username])
        if broker.tls:
            self.client.tls_set(
                ca_certs=str(broker.ca_file), certfile=str(broker.client_cert), keyfile=str(broker.client_key)
            )
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), f"subscriber could not subscribe to {topic}"

    def get(self, timeout_s: float = WAIT_S) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout_s} s") from None

    def nothing_within(self, timeout_s: float) -> bool:
        try:
            self.messages.get(timeout=timeout_s)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for sub in made:
        sub.close()


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    made: list[Publisher] = []
    yield made
    for pub in made:
        pub.stop(timeout_s=1)


def started(publishers: list[Publisher], settings: MqttSettings, *, connect: bool = True) -> Publisher:
    pub = Publisher(settings)
    publishers.append(pub)
    pub.start()
    if connect:
        assert pub.wait_connected(WAIT_S), f"not connected: {pub.last_error}"
    return pub


def subscribe(subscribers: list[Subscriber], broker: MqttBroker, topic: str, **kw: Any) -> Subscriber:
    sub = Subscriber(broker, topic, **kw)
    subscribers.append(sub)
    return sub


# ------------------------------------------------------------------------------------------ delivery


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_records_arrive_in_order_and_are_acknowledged(
    mqtt_broker: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber], protocol: str
) -> None:
    sub = subscribe(subscribers, mqtt_broker, "cctv/+/+/frame")
    pub = started(publishers, settings_for(mqtt_broker, protocol=protocol))
    done = Outcomes()
    for seq in range(1, 11):
        pub.publish_record(seq, record(seq), done)
    assert all(r.ok for r in done.wait(*range(1, 11)).values())
    got = [sub.get() for _ in range(10)]
    assert [m.topic for m in got] == ["cctv/depot/cam1/frame"] * 10
    assert [m.payload for m in got] == [record(seq) for seq in range(1, 11)]
    assert all(m.qos == 1 and not m.retain for m in got)


def test_status_online_then_offline_on_clean_stop(
    mqtt_broker: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    # The watcher sees each status live, so the broker holds it before a new subscriber asks: that one must
    # get it as a retained message (subscribing earlier would race the publish and see it live, unretained).
    watcher = subscribe(subscribers, mqtt_broker, "cctv/depot/cam1/status")
    pub = started(publishers, settings_for(mqtt_broker))
    assert watcher.get().payload == b"online"
    online = subscribe(subscribers, mqtt_broker, "cctv/depot/cam1/status").get()
    assert (online.payload, online.retain) == (b"online", True)
    pub.stop()
    assert not pub.connected()
    assert watcher.get().payload == b"offline"
    offline = subscribe(subscribers, mqtt_broker, "cctv/depot/cam1/status").get()
    assert (offline.payload, offline.retain) == (b"offline", True)
    late = Outcomes()
    pub.publish_record(1, record(1), late)
    assert late.wait(1)[1] == DeliveryResult(False, "Publisher stopped", retryable=True)


def test_stats_and_preview(
    mqtt_broker: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    pub = started(publishers, settings_for(mqtt_broker))
    stats = subscribe(subscribers, mqtt_broker, "cctv/depot/cam1/stats")
    pub.publish_stats({"frames": 3, "fps": 2.5})
    assert stats.get().payload == b'{"fps":2.5,"frames":3}'
    live = subscribe(subscribers, mqtt_broker, "cctv/depot/cam1/preview")
    pub.publish_preview(b"\xff\xd8jpeg\xff\xd9")
    assert live.get().payload == b"\xff\xd8jpeg\xff\xd9"
    late = subscribe(subscribers, mqtt_broker, "cctv/depot/cam1/preview").get()
    assert (late.payload, late.retain) == (b"\xff\xd8jpeg\xff\xd9", True)
    pub.publish_preview(b"\xff\xd8" + bytes(300_000))  # above the 256 KiB payload limit: skipped
    assert live.nothing_within(0.3)


def test_stop_waits_for_pending_records_and_cannot_restart(
    mqtt_broker: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mqtt_broker, "cctv/+/+/frame")
    pub = started(publishers, settings_for(mqtt_broker))
    done = Outcomes()
    for seq in range(100):
        pub.publish_record(seq, record(seq, 20_000), done)
    pub.stop(timeout_s=WAIT_S)
    assert all(r.ok for r in done.wait(*range(100), timeout_s=0).values())
    assert pub.pending_records() == 0
    assert [sub.get().payload for _ in range(100)] == [record(seq, 20_000) for seq in range(100)]
    with pytest.raises(PublishError, match="was stopped"):
        pub.start()


# ------------------------------------------------------------------------------------------ TLS


def test_tls_with_client_certificate(
    mqtt_broker_tls: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mqtt_broker_tls, "cctv/+/+/frame")
    pub = started(publishers, settings_for(mqtt_broker_tls))
    done = Outcomes()
    pub.publish_record(1, record(1, 5000), done)
    assert done.wait(1)[1].ok
    assert sub.get().payload == record(1, 5000)


def test_tls_with_the_wrong_ca_fails_clearly(
    mqtt_broker_tls: MqttBroker, mqtt_certs: Certs, publishers: list[Publisher]
) -> None:
    pub = started(publishers, settings_for(mqtt_broker_tls, ca_file=mqtt_certs.rogue_ca_file), connect=False)
    deadline = time.monotonic() + WAIT_S
    while pub.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pub.connected()
    assert pub.last_error is not None
    assert "TLS verification of broker 127.0.0.1" in pub.last_error
    assert "certificate verify failed" in pub.last_error


def test_tls_client_certificate_from_another_ca_is_refused(
    mqtt_broker_tls: MqttBroker, mqtt_certs: Certs, publishers: list[Publisher]
) -> None:
    settings = settings_for(
        mqtt_broker_tls, cert_file=mqtt_certs.rogue_client_cert, key_file=mqtt_certs.rogue_client_key
    )
    pub = started(publishers, settings, connect=False)
    assert not pub.wait_connected(2)
    deadline = time.monotonic() + WAIT_S
    while pub.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.last_error is not None
    assert "broker 127.0.0.1" in pub.last_error
    assert "unknown ca" in pub.last_error.lower() or "certificate" in pub.last_error.lower()


def test_tls_host_name_is_checked_unless_insecure(
    mqtt_broker_tls: MqttBroker, publishers: list[Publisher]
) -> None:
    # "127.1" reaches the broker but is not a name in its certificate (localhost, 127.0.0.1)
    strict = started(publishers, settings_for(mqtt_broker_tls, host="127.1"), connect=False)
    deadline = time.monotonic() + WAIT_S
    while strict.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert strict.last_error is not None
    assert "mismatch" in strict.last_error.lower()
    insecure = settings_for(mqtt_broker_tls, host="127.1", client_id="insecure", tls_insecure=True)
    assert started(publishers, insecure).connected()
    assert not strict.connected()


def test_missing_key_file_is_a_config_error(mqtt_broker_tls: MqttBroker, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.tls: cannot load"):
        Publisher(settings_for(mqtt_broker_tls, key_file=tmp_path / "missing.key"))


# ------------------------------------------------------------------------------------------ ACL


def test_acl_denial_is_a_failed_delivery_with_mqtt5(
    mqtt_broker_acl: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mqtt_broker_acl, "cctv/+/+/frame", username="collector")
    user = {"username": "cam1", "password": mqtt_broker_acl.users["cam1"]}
    own = started(publishers, settings_for(mqtt_broker_acl, **user))
    other = started(publishers, settings_for(mqtt_broker_acl, client_id="agent-cam2", camera="cam2", **user))
    done = Outcomes()
    own.publish_record(1, record(1), done)
    other.publish_record(2, record(2), done)
    results = done.wait(1, 2)
    assert results[1].ok
    assert results[2] == DeliveryResult(False, "Not authorized", retryable=False, reason_code=0x87)
    assert sub.get().payload == record(1)
    assert sub.nothing_within(0.5)


def test_acl_denial_is_invisible_with_mqtt311(
    mqtt_broker_acl: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    """Documents why MQTT 5 is the default: a 3.1.1 broker acknowledges a denied publish as if it worked."""
    sub = subscribe(subscribers, mqtt_broker_acl, "cctv/+/+/frame", username="collector")
    settings = settings_for(
        mqtt_broker_acl,
        protocol="3.1.1",
        camera="cam2",
        username="cam1",
        password=mqtt_broker_acl.users["cam1"],
    )
    pub = started(publishers, settings)
    done = Outcomes()
    pub.publish_record(1, record(1), done)
    assert done.wait(1)[1].ok
    assert sub.nothing_within(0.5)
    assert "Denied PUBLISH" in mqtt_broker_acl.log_text()


def test_wrong_password_is_reported(mqtt_broker_acl: MqttBroker, publishers: list[Publisher]) -> None:
    pub = started(publishers, settings_for(mqtt_broker_acl, username="cam1", password="nope"), connect=False)
    deadline = time.monotonic() + WAIT_S
    while pub.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pub.connected()
    assert pub.last_error is not None
    assert "refused the connection" in pub.last_error


# ------------------------------------------------------------------------------------------ chunking


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_big_record_is_chunked_below_the_broker_limit(
    mqtt_broker_factory: BrokerFactory,
    publishers: list[Publisher],
    subscribers: list[Subscriber],
    protocol: str,
) -> None:
    broker = mqtt_broker_factory(max_packet_size=64 * 1024)
    sub = subscribe(subscribers, broker, "cctv/+/+/frame")
    # MQTT 5 learns the limit from CONNACK; with 3.1.1 the setting has to be below it
    limit = 256 * 1024 if protocol == "5" else 60 * 1024
    pub = started(publishers, settings_for(broker, protocol=protocol, max_payload_bytes=limit))
    assert pub.payload_limit() < 64 * 1024
    big = record(7, 300_000)
    done = Outcomes()
    pub.publish_record(7, big, done)
    pub.publish_record(8, record(8), done)
    assert all(r.ok for r in done.wait(7, 8).values())
    messages = len(split_record(7, big, pub.payload_limit())) + 1
    assert messages >= 6
    reassembler = Reassembler()
    complete = []
    for _ in range(messages):
        message = sub.get()
        assert len(message.payload) <= pub.payload_limit()
        if (whole := reassembler.feed("cctv/depot/cam1", message.payload)) is not None:
            complete.append(whole)
    assert complete == [big, record(8)]
    assert sub.nothing_within(0.3)


def test_too_many_chunks_is_a_final_failure(mqtt_broker: MqttBroker, publishers: list[Publisher]) -> None:
    pub = started(publishers, settings_for(mqtt_broker, max_payload_bytes=1024))
    done = Outcomes()
    pub.publish_record(1, record(1, 70_000_000), done)
    result = done.wait(1)[1]
    assert (result.ok, result.retryable) == (False, False)
    assert "65535" in result.reason


# ------------------------------------------------------------------------------------------ outages


def test_last_will_says_offline_when_the_agent_is_killed(
    mqtt_broker: MqttBroker, subscribers: list[Subscriber]
) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from agent.transport import MqttSettings, Publisher
        pub = Publisher(MqttSettings(host={mqtt_broker.host!r}, port={mqtt_broker.port}, client_id="doomed",
                                     site="depot", camera="cam9"))
        pub.start()
        assert pub.wait_connected(10)
        print("connected", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"connected\n"
        status = subscribe(subscribers, mqtt_broker, "cctv/depot/cam9/status")
        assert status.get().payload == b"online"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        will = status.get()
        assert (will.payload, will.retain) == (b"offline", False)  # retained copy: see below
        late = subscribe(subscribers, mqtt_broker, "cctv/depot/cam9/status").get()
        assert (late.payload, late.retain) == (b"offline", True)
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_reconnects_after_the_broker_comes_back(
    mqtt_broker: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    connects = threading.Semaphore(0)
    pub = Publisher(settings_for(mqtt_broker))
    publishers.append(pub)
    pub.add_connect_listener(connects.release)
    pub.start()
    assert connects.acquire(timeout=WAIT_S)
    done = Outcomes()
    pub.publish_record(1, record(1), done)
    assert done.wait(1)[1].ok

    mqtt_broker.stop()
    deadline = time.monotonic() + WAIT_S
    while pub.connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pub.connected()
    pub.publish_record(2, record(2), done)
    assert done.wait(2)[2] == DeliveryResult(False, "Not connected", retryable=True)

    mqtt_broker.start()
    sub = subscribe(subscribers, mqtt_broker, "cctv/+/+/frame")
    assert connects.acquire(timeout=WAIT_S), "no reconnect after the broker came back"
    again = Outcomes()
    pub.publish_record(2, record(2) + b"again", again)
    pub.publish_record(3, record(3), again)
    assert all(r.ok for r in again.wait(2, 3).values())
    assert [sub.get().payload, sub.get().payload] == [record(2) + b"again", record(3)]


def test_records_in_flight_when_the_broker_dies_are_delivered_after_reconnect(
    mqtt_broker: MqttBroker, publishers: list[Publisher], subscribers: list[Subscriber]
) -> None:
    pub = started(publishers, settings_for(mqtt_broker))
    mqtt_broker.freeze()  # PUBLISH sent, PUBACK never comes
    done = Outcomes()
    for seq in (1, 2, 3):
        pub.publish_record(seq, record(seq), done)
    time.sleep(0.3)
    assert done.results == {}
    mqtt_broker.kill()
    mqtt_broker.start()
    sub = subscribe(subscribers, mqtt_broker, "cctv/+/+/frame")
    assert all(r.ok for r in done.wait(1, 2, 3, timeout_s=WAIT_S).values())
    assert sorted(sub.get().payload for _ in range(3)) == [record(1), record(2), record(3)]


def test_stop_while_the_broker_is_down_ends_pending_records(
    mqtt_broker: MqttBroker, publishers: list[Publisher]
) -> None:
    pub = started(publishers, settings_for(mqtt_broker))
    mqtt_broker.freeze()
    done = Outcomes()
    pub.publish_record(1, record(1), done)
    time.sleep(0.2)
    mqtt_broker.kill()
    started_at = time.monotonic()
    pub.stop(timeout_s=1)
    assert time.monotonic() - started_at < 5
    assert done.wait(1)[1] == DeliveryResult(False, "Publisher stopped", retryable=True)
