"""The configuration: one TOML file read into typed, frozen models that reject unknown keys.

``config.toml`` (agent) and ``docs/collector.example.toml`` (collector) document every key with its default;
``docs/config.md`` covers secrets and ``check-config``.
"""

from agent.config.loader import (
    check_config_main,
    find_line,
    load_agent_config,
    load_collector_config,
    parse_agent_config,
    parse_collector_config,
    read_toml,
)
from agent.config.models import (
    AgentConfig,
    AgentSection,
    CaptureKind,
    CaptureSection,
    CodecSection,
    CollectorConfig,
    CollectorSection,
    LogLevel,
    MqttProtocol,
    MqttSection,
    SimulatedSection,
    SpoolSection,
    TlsSection,
)
from agent.config.secrets import CREDENTIALS_ENV, PASSWORD_ENV

__all__ = [
    "CREDENTIALS_ENV",
    "PASSWORD_ENV",
    "AgentConfig",
    "AgentSection",
    "CaptureKind",
    "CaptureSection",
    "CodecSection",
    "CollectorConfig",
    "CollectorSection",
    "LogLevel",
    "MqttProtocol",
    "MqttSection",
    "SimulatedSection",
    "SpoolSection",
    "TlsSection",
    "check_config_main",
    "find_line",
    "load_agent_config",
    "load_collector_config",
    "parse_agent_config",
    "parse_collector_config",
    "read_toml",
]
