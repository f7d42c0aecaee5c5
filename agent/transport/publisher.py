"""Publishing records to the broker with paho-mqtt 2.x, reporting each record's fate exactly once.

Threads: paho's network thread (``loop_start``) runs every ``on_*`` callback below; the agent's thread
calls ``publish_record`` and friends. ``_lock`` guards ``_by_mid``, ``_early``, ``_running``, ``_stopped``
and each ``_Delivery``'s counters; it is never held while calling into paho or into the agent's callbacks,
because paho calls ``on_publish`` while holding its own message lock (taking ours inside theirs, and never
the reverse, cannot deadlock).

Delivery contract (``docs/topics.md``): every ``publish_record`` call ends in exactly one
``on_done(seq, result)``: ok once the broker acknowledged all of the record's messages, not ok when it
refused one (MQTT 5 PUBACK reason >= 0x80), when the publisher was not connected at the time of the call
(reported at once, from the caller's thread), or when the publisher stops first. Records in flight
when the connection drops stay pending: paho sends them again after reconnecting. Paho's queue is
memory only, so the agent's spool keeps each record until its ``on_done`` says ok.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import ConfigError, PublishError
from agent.transport.chunks import split_record
from agent.transport.client import PahoClient
from agent.transport.settings import MqttSettings
from agent.transport.topics import STATUS_OFFLINE, STATUS_ONLINE

log = logging.getLogger(__name__)

# PUBACK failures worth trying again later; the others need an operator (ACL, topic, size, format).
RETRYABLE_REASONS = frozenset({0x80, 0x83, 0x89, 0x91, 0x97})
# Fixed header (5) + topic length (2) + packet id (2) + properties length (4), above the topic itself.
PACKET_OVERHEAD = 13
# An ack can beat the registration of its mid by microseconds; one older than this is stale, not early
# (it must never settle a later message that reuses the mid).
_EARLY_ACK_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one record: delivered, or refused with the broker's (or our) reason."""

    ok: bool
    reason: str = "Success"
    retryable: bool = False
    reason_code: int | None = None
    """The MQTT 5 reason code when the broker gave one."""


OnDone = Callable[[int, DeliveryResult], None]


class _Delivery:
    """One ``publish_record`` call: the messages still unacknowledged and whom to tell."""

    __slots__ = ("done", "on_done", "remaining", "seq")

    def __init__(self, seq: int, on_done: OnDone, remaining: int) -> None:
        self.seq = seq
        self.on_done = on_done
        self.remaining = remaining
        self.done = False


_UNTRACKED = None  # status, stats and preview messages: failures are logged, nobody waits for them


class Publisher:
    """The agent's MQTT link: status with last will, records (chunked when too big), stats and preview."""

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self._protocol = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
        self._client = PahoClient(
            CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=self._protocol
        )
        self._lock = threading.Lock()
        self._by_mid: dict[int, _Delivery | None] = {}
        self._early: OrderedDict[int, tuple[float, ReasonCode]] = OrderedDict()  # acks before registration
        self._running = False
        self._stopped = False
        self._connected = threading.Event()
        self._broker_max_packet: int | None = None
        self._last_error: str | None = None
        self._last_paho_error: str | None = None  # paho logs socket errors it does not pass on
        self._refused = False  # the last CONNACK said no
        self._connect_listeners: list[Callable[[], None]] = []
        self._configure()

    # ------------------------------------------------------------------------------------- public API

    def add_connect_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every successful (re)connect, from paho's thread: it should only
        signal the agent's own thread (which then re-sends what its spool holds), not block."""
        self._connect_listeners.append(listener)

    def start(self) -> None:
        """Connect in the background; reconnect forever with doubling back-off capped at reconnect_max_s."""
        with self._lock:
            if self._stopped:
                raise PublishError(f"publisher of {self.topics.base} was stopped; make a new one")
            if self._running:
                return
            self._running = True
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s
        )
        self._client.loop_start()

    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt failed (TLS, refused, unreachable), None once connected."""
        return self._last_error

    def payload_limit(self, topic: str | None = None) -> int:
        """Largest payload for ``topic`` (default: frame): ours, or less if the broker announced less."""
        limit = self.settings.max_payload_bytes
        broker = self._broker_max_packet
        if broker is not None:
            overhead = PACKET_OVERHEAD + len((topic or self.topics.frame).encode())
            limit = min(limit, broker - overhead)
        return limit

    def publish_record(self, seq: int, record: bytes, on_done: OnDone) -> None:
        """Send one wire record (as chunks when above ``payload_limit()``); see the module's contract."""
        with self._lock:
            running = self._running
        if not running or not self.connected():
            on_done(seq, DeliveryResult(False, "Not connected" if running else "Publisher stopped", True))
            return
        try:
            messages = split_record(seq, record, self.payload_limit())
        except ValueError as e:
            log.error("record seq=%d cannot be sent: %s", seq, e)
            on_done(seq, DeliveryResult(False, str(e), retryable=False))
            return
        delivery = _Delivery(seq, on_done, len(messages))
        for payload in messages:
            info = self._client.publish(self.topics.frame, payload, qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # NO_CONN means paho queued it and sends it after reconnecting: still pending
                self._settle_locally(delivery, mqtt.error_string(info.rc))
                return
            self._track(info.mid, delivery)

    def publish_stats(self, stats: dict[str, object]) -> None:
        """Fire-and-forget JSON counters (QoS 0); dropped while disconnected."""
        payload = json.dumps(stats, separators=(",", ":"), sort_keys=True, default=str).encode()
        self._publish_untracked(self.topics.stats, payload, qos=0, retain=False)

    def publish_preview(self, jpeg: bytes) -> None:
        """Fire-and-forget retained JPEG (QoS 0); skipped when bigger than one message may be."""
        limit = self.payload_limit(self.topics.preview)
        if len(jpeg) > limit:
            log.warning("preview of %d bytes skipped: above the %d-byte message limit", len(jpeg), limit)
            return
        self._publish_untracked(self.topics.preview, jpeg, qos=0, retain=True)

    def pending_records(self) -> int:
        """Records handed over whose ``on_done`` has not been called yet."""
        with self._lock:
            return len({id(d) for d in self._by_mid.values() if d is not None and not d.done})

    def stop(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for pending records, publish ``offline``, disconnect, end paho's thread.

        Records still pending then end as not delivered ("Publisher stopped"). A stopped publisher cannot
        be started again (paho would re-send messages whose fate was already reported): make a new one.
        """
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._stopped = True
        deadline = time.monotonic() + timeout_s
        while self.connected() and self.pending_records() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.connected():
            info = self._client.publish(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline status on stop: %s", e)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        with self._lock:
            left = [d for d in self._by_mid.values() if d is not None and not d.done]
            self._by_mid.clear()
            self._early.clear()
        for delivery in dict.fromkeys(left):
            self._settle_locally(delivery, "Publisher stopped")

    # ------------------------------------------------------------------------------------- internals

    def _configure(self) -> None:
        s = self.settings
        client = self._client
        client.log_to(logging.getLogger(f"{__name__}.paho"), on_error=self._paho_error)
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            try:
                client.tls_set(
                    ca_certs=str(s.ca_file) if s.ca_file else None,
                    certfile=str(s.cert_file) if s.cert_file else None,
                    keyfile=str(s.key_file) if s.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as e:
                raise ConfigError("mqtt.tls", f"cannot load CA/certificate/key: {e}") from e
            client.tls_insecure_set(s.tls_insecure)
        client.will_set(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.max_inflight_messages_set(s.max_inflight)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    def _publish_untracked(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        if not self.connected():
            log.debug("not connected: dropped message to %s", topic)
            return
        self._send_untracked(topic, payload, qos=qos, retain=retain)

    def _send_untracked(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (qos and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._track(info.mid, _UNTRACKED)  # QoS 1 without connection: paho sends it later
        else:
            log.debug("message to %s not sent: %s", topic, mqtt.error_string(info.rc))

    def _track(self, mid: int, delivery: _Delivery | None) -> None:
        with self._lock:
            stopped = self._stopped  # stop() has swept, or will sweep, only what is registered by now
            early = self._early.pop(mid, None)
            if early is not None and time.monotonic() - early[0] <= _EARLY_ACK_TTL_S:
                outcome = self._settle(mid, delivery, early[1])
            elif stopped:
                outcome = None
            else:
                self._by_mid[mid] = delivery
                return
        _report(outcome)
        if stopped and delivery is not None:
            self._settle_locally(delivery, "Publisher stopped")

    def _settle_locally(self, delivery: _Delivery, reason: str) -> None:
        with self._lock:
            if delivery.done:
                return
            delivery.done = True
        log.warning("record seq=%d not delivered: %s", delivery.seq, reason)
        _report((delivery.on_done, delivery.seq, DeliveryResult(False, reason, retryable=True)))

    def _settle(
        self, mid: int, delivery: _Delivery | None, reason: ReasonCode
    ) -> tuple[OnDone, int, DeliveryResult] | None:
        """Count one acknowledgement (called with ``_lock`` held); say whom to tell, if anyone."""
        if reason.is_failure:
            what = f"record seq={delivery.seq}" if delivery is not None else "status/stats/preview message"
            log.warning("broker refused %s (mid %d): %s (0x%02x)", what, mid, reason, reason.value)
        if delivery is None or delivery.done:
            return None
        if reason.is_failure:
            delivery.done = True
            result = DeliveryResult(False, str(reason), reason.value in RETRYABLE_REASONS, reason.value)
            return delivery.on_done, delivery.seq, result
        delivery.remaining -= 1
        if delivery.remaining:
            return None
        delivery.done = True
        return delivery.on_done, delivery.seq, DeliveryResult(True, str(reason), False, reason.value)

    # ------------------------------------------------------------------------------- paho callbacks

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        with self._lock:
            if mid not in self._by_mid:
                now = time.monotonic()
                self._early[mid] = (now, reason)
                self._early.move_to_end(mid)
                while now - next(iter(self._early.values()))[0] > _EARLY_ACK_TTL_S:
                    self._early.popitem(last=False)
                return
            outcome = self._settle(mid, self._by_mid.pop(mid), reason)
        _report(outcome)

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
            message = f"broker {where} refused the connection: {reason}"
            if message != self._last_error:
                log.error("%s (retrying with back-off)", message)
            self._last_error = message
            self._refused = True  # the disconnect that follows must not blur the reason
            return
        broker_max = getattr(properties, "MaximumPacketSize", None)
        self._broker_max_packet = int(broker_max) if broker_max is not None else None
        receive_max = getattr(properties, "ReceiveMaximum", None)
        inflight = self.settings.max_inflight
        if receive_max is not None and int(receive_max) < inflight:
            # paho cannot change its window on a live connection; the broker may disconnect us
            log.warning(
                "broker's Receive Maximum %d is below max_inflight=%d: lower mqtt.max_inflight",
                receive_max, inflight,
            )  # fmt: skip
        self._last_error = self._last_paho_error = None
        log.info(
            "connected to %s (MQTT %s, payload limit %d bytes, %d in flight)",
            where, self.settings.protocol, self.payload_limit(), inflight,
        )  # fmt: skip
        self._send_untracked(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        self._connected.set()
        for listener in list(self._connect_listeners):
            try:
                listener()
            except Exception:
                log.exception("connect listener failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block: the exception is the reason
        error = sys.exc_info()[1]
        where = f"{self.settings.host}:{self.settings.port}"
        if isinstance(error, ssl.SSLCertVerificationError):
            message = (
                f"TLS verification of broker {where} failed (certificate verify failed: "
                f"{error.verify_message or error}); check mqtt.ca_file and the broker's certificate"
            )
        elif isinstance(error, ssl.SSLError):
            message = f"TLS handshake with broker {where} failed: {error}"
        else:
            message = f"cannot connect to broker {where}: {error or 'unknown error'}"
        if message != self._last_error:
            log.warning("%s (retrying with back-off)", message)
        self._last_error = message

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not self._running:
            return
        if was_connected:
            log.warning("disconnected from broker: %s; reconnecting", reason)
            return
        if self._refused:
            self._refused = False
            return
        # closed before CONNACK: typically the broker refusing our TLS client certificate
        where = f"{self.settings.host}:{self.settings.port}"
        message = (
            f"broker {where} closed the connection before accepting it: {self._last_paho_error or reason}"
        )
        if message != self._last_error:
            log.warning("%s (retrying with back-off)", message)
        self._last_error = message

    def _paho_error(self, line: str) -> None:
        self._last_paho_error = line


def _report(outcome: tuple[OnDone, int, DeliveryResult] | None) -> None:
    if outcome is None:
        return
    on_done, seq, result = outcome
    try:
        on_done(seq, result)
    except Exception:
        log.exception("on_done callback failed for record seq=%d", seq)
