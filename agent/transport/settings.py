"""How to reach the broker, as one frozen value checked as a whole (client cert and key go together)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.errors import ConfigError
from agent.transport.topics import TopicSet, validate_id, validate_prefix

MIN_PAYLOAD_BYTES = 1024


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """Connection, security and sizing of the MQTT link of one camera.

    ``max_payload_bytes`` is the largest message payload the agent sends; records above it are chunked.
    With MQTT 5 a smaller Maximum Packet Size announced by the broker in CONNACK wins. With MQTT 3.1.1
    brokers announce nothing, so this must be set below the broker's limit by hand.
    """

    host: str
    port: int = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    """CA bundle that signed the broker's certificate; None uses the system's trust store."""
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    """Turns the broker host name check off (the certificate chain is still verified)."""
    keepalive_s: int = 30
    max_payload_bytes: int = 256 * 1024
    max_inflight: int = 20
    topic_prefix: str = "cctv"
    site: str
    camera: str
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60

    def __post_init__(self) -> None:
        def bad(key: str, message: str) -> ConfigError:
            return ConfigError(f"mqtt.{key}", message)

        if not self.host:
            raise bad("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise bad("port", f"{self.port} is not a TCP port (1–65535)")
        if self.protocol not in ("5", "3.1.1"):
            raise bad("protocol", f"{self.protocol!r} is not one of '5', '3.1.1'")
        if not self.client_id or len(self.client_id.encode()) > 65535:
            raise bad("client_id", "must be 1–65535 bytes of UTF-8")
        if self.password is not None and self.username is None:
            raise bad("password", "is set but username is not")
        if (self.cert_file is None) != (self.key_file is None):
            raise bad("cert_file", "cert_file and key_file must be given together")
        if not self.tls:
            for key in ("ca_file", "cert_file", "tls_insecure"):
                if getattr(self, key):
                    raise bad(key, "is set but tls is false")
        if not 5 <= self.keepalive_s <= 65535:
            raise bad("keepalive_s", f"{self.keepalive_s} is outside 5–65535")
        if self.max_payload_bytes < MIN_PAYLOAD_BYTES:
            raise bad("max_payload_bytes", f"{self.max_payload_bytes} is below {MIN_PAYLOAD_BYTES}")
        if not 1 <= self.max_inflight <= 65535:
            raise bad("max_inflight", f"{self.max_inflight} is outside 1–65535")
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise bad("reconnect_max_s", "need 1 <= reconnect_min_s <= reconnect_max_s")
        checks = (("topic_prefix", validate_prefix), ("site", validate_id), ("camera", validate_id))
        for key, check in checks:
            try:
                check(getattr(self, key), key)
            except ValueError as e:
                raise bad(key, str(e)) from e

    @property
    def topics(self) -> TopicSet:
        return TopicSet(self.topic_prefix, self.site, self.camera)
