"""Map the validated config onto the parts: capture source, codec settings, spool, MQTT settings."""

from __future__ import annotations

from agent.capture.base import CaptureSource
from agent.capture.factory import open_source
from agent.config import AgentConfig, MqttSection
from agent.simulate.scene import SceneSettings
from agent.spool import Spool
from agent.transport.settings import MqttSettings


def make_source(config: AgentConfig) -> CaptureSource:
    c = config.capture
    sim = c.simulated
    return open_source(
        c.kind,
        device=c.device,
        url=c.url,
        path=c.path,
        width=c.width,
        height=c.height,
        fps=c.fps,
        fourcc=c.fourcc,
        open_timeout_s=c.open_timeout_s,
        read_timeout_s=c.read_timeout_s,
        stall_timeout_s=c.stall_timeout_s,
        reconnect_max_s=c.reconnect_max_s,
        loop=c.loop,
        decoder=c.decoder,
        ca_file=c.ca_file,
        sampled=config.agent.sample_interval_s > 0,
        sim=SceneSettings(
            seed=sim.seed,
            width=sim.width,
            height=sim.height,
            fps=sim.fps,
            clock=sim.clock,
            noise=sim.noise,
            day_length_s=sim.day_length_s,
        ),
    )


def mqtt_settings(mqtt: MqttSection, *, site: str, camera: str, client_id: str | None = None) -> MqttSettings:
    tls = mqtt.tls
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        protocol=mqtt.protocol,
        client_id=client_id or mqtt.client_id,
        username=mqtt.username,
        password=mqtt.password,
        tls=tls.enabled,
        ca_file=tls.ca_file,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        tls_insecure=tls.enabled and not tls.check_hostname,
        keepalive_s=mqtt.keepalive_s,
        max_payload_bytes=mqtt.max_payload_bytes,
        max_inflight=mqtt.max_inflight,
        topic_prefix=mqtt.topic_prefix,
        site=site,
        camera=camera,
        reconnect_min_s=mqtt.reconnect_min_s,
        reconnect_max_s=mqtt.reconnect_max_s,
    )


def make_spool(config: AgentConfig) -> Spool:
    return Spool(config.spool.directory, config.spool.max_bytes)
