"""The collector's MQTT side: a persistent QoS 1 session whose messages are acknowledged by hand.

Threads: paho's network thread (``loop_start``) runs the ``_on_*`` callbacks and only appends to the
inbox (a ``queue.Queue``, which owns its own locking). The collector's thread takes messages out of the
inbox and later calls :meth:`Link.ack`. ``_lock`` guards ``_generation`` only; it is held while asking
paho to send a PUBACK so that an acknowledgement can never cross a reconnect (see ``ack``). Paho calls
our callbacks with its callback mutex held and we take ``_lock`` inside it; ``ack`` takes paho's
out-packet mutex inside ``_lock``. Paho never holds its out-packet mutex while calling back, so the two
orders cannot deadlock.

Why a generation: packet ids are only unique among a connection's unacknowledged messages. After a
reconnect the broker re-sends what we had not acknowledged (same ids) and may reuse ids it saw acked. A
PUBACK queued for a message of an earlier connection could then acknowledge a different, not yet stored
message, so acknowledgements of earlier connections are dropped: the broker re-sends those messages and
the archive recognises them as duplicates.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.models import MqttSection
from agent.errors import ConfigError
from agent.transport.client import PahoClient

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
"""How long the broker keeps the session (and queues QoS 1 messages) while the collector is away."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received; ``topic`` is None when its bytes were not UTF-8."""

    topic: str | None
    raw_topic: bytes
    payload: bytes = field(repr=False)
    mid: int
    qos: int
    generation: int
    """The connection it arrived on; only that connection may acknowledge it."""


class Link:
    """Connects with a fixed client id and a session that outlives the process, subscribes, queues."""

    def __init__(self, settings: MqttSection, subscription: str, inbox: queue.Queue[Incoming]) -> None:
        self.settings = settings
        self.subscription = subscription
        self.inbox = inbox
        self._v5 = settings.protocol == "5"
        if self._v5:
            client = PahoClient(
                CallbackAPIVersion.VERSION2,
                client_id=settings.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            client = PahoClient(
                CallbackAPIVersion.VERSION2,
                client_id=settings.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        self._client = client
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = False
        self._configure()

    # ------------------------------------------------------------------------------------- public API

    def start(self) -> None:
        """Connect in the background; paho reconnects with back-off up to ``reconnect_max_s``."""
        s = self.settings
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            # how many unacknowledged messages the broker may send at once: the most one batch can hold
            props.ReceiveMaximum = s.max_inflight
            self._client.connect_async(
                s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props
            )
        else:
            self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def connected(self) -> bool:
        return self._connected.is_set()

    def ack(self, messages: Iterable[Incoming]) -> int:
        """Acknowledge ``messages`` (in the order given) that arrived on the current connection.

        Returns how many PUBACKs were queued; the others will be re-sent by the broker.
        """
        sent = 0
        with self._lock:
            for message in messages:
                if message.qos == 0:
                    continue
                if message.generation != self._generation or not self._connected.is_set():
                    continue
                self._client.ack(message.mid, message.qos)
                sent += 1
        return sent

    def stop(self) -> None:
        """Disconnect after the PUBACKs already queued, and stop paho's thread. The session stays."""
        self._stopping = True
        if self._v5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            self._client.disconnect(properties=props)
        else:
            self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # ------------------------------------------------------------------------------------- internals

    def _configure(self) -> None:
        s = self.settings
        client = self._client
        client.log_to(logging.getLogger(f"{__name__}.paho"))
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls.enabled:
            try:
                client.tls_set(
                    ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                    certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                    keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as e:
                raise ConfigError("mqtt.tls", f"cannot load CA/certificate/key: {e}") from e
            client.tls_insecure_set(not s.tls.check_hostname)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        if reason.is_failure:
            log.error("broker %s refused the connection: %s (retrying with back-off)", where, reason)
            return
        with self._lock:
            self._generation += 1
            self._connected.set()
        log.info(
            "connected to %s as %r (MQTT %s, session %s)",
            where, self.settings.client_id, self.settings.protocol,
            "resumed" if flags.session_present else "new",
        )  # fmt: skip
        # subscribing again is harmless when the session kept the subscription, and needed when it expired
        client.subscribe(self.subscription, qos=1)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning(
            "cannot connect to broker %s:%d (retrying with back-off)", self.settings.host, self.settings.port
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            was_connected = self._connected.is_set()
            self._generation += 1
            self._connected.clear()
        if was_connected and not self._stopping:
            log.warning("disconnected from broker: %s; unacknowledged messages will be re-sent", reason)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("broker refused the subscription to %r: %s", self.subscription, failed[0])
            return
        log.info("subscribed to %r at QoS %d", self.subscription, min(r.value for r in reasons))
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        raw_topic = bytes(message._topic)  # paho exposes only the decoded form
        try:
            topic: str | None = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = None
        with self._lock:
            generation = self._generation
        self.inbox.put(
            Incoming(topic, raw_topic, bytes(message.payload), message.mid, message.qos, generation)
        )
