"""Read a TOML file into :class:`AgentConfig` or :class:`CollectorConfig`, and ``check-config``.

Every problem in a file is collected in one pass and raised together (``ConfigErrors``), each naming its full
key path; ``check_config_main`` prints them with the TOML line they point at.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.config.models import AgentConfig, CollectorConfig, raise_problems
from agent.config.schema import Problems, build
from agent.config.secrets import resolve_capture_secrets, resolve_mqtt_secrets
from agent.errors import ConfigError

ConfigT = TypeVar("ConfigT", AgentConfig, CollectorConfig)


def load_agent_config(path: Path, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """The agent's config from ``path``; ``env`` defaults to ``os.environ`` (secrets, credentials)."""
    return parse_agent_config(read_toml(path), source=str(path), env=env, base_dir=path.parent)


def load_collector_config(path: Path, *, env: Mapping[str, str] | None = None) -> CollectorConfig:
    """The collector's config from ``path``; ``env`` defaults to ``os.environ``."""
    return parse_collector_config(read_toml(path), source=str(path), env=env, base_dir=path.parent)


def parse_agent_config(
    data: Mapping[str, Any],
    *,
    source: str = "<memory>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> AgentConfig:
    """The agent's config from an already parsed table; relative secret files are found under ``base_dir``."""
    return _parse(AgentConfig, data, source, env, base_dir)


def parse_collector_config(
    data: Mapping[str, Any],
    *,
    source: str = "<memory>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> CollectorConfig:
    """The collector's config from an already parsed table."""
    return _parse(CollectorConfig, data, source, env, base_dir)


def _parse(
    cls: type[ConfigT],
    data: Mapping[str, Any],
    source: str,
    env: Mapping[str, str] | None,
    base_dir: Path | None,
) -> ConfigT:
    problems = Problems()
    table = dict(data)
    environment = os.environ if env is None else env
    table["mqtt"] = resolve_mqtt_secrets(table.get("mqtt", {}), "mqtt", environment, base_dir, problems)
    if "capture" in table:  # the agent's camera
        table["capture"] = resolve_capture_secrets(
            table["capture"], "capture", environment, base_dir, problems
        )
    config = build(cls, table, "", problems)
    raise_problems(problems.items, source)
    assert config is not None  # build returns None only with problems, raised just above
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; unreadable files and syntax errors become ConfigError (with line and column)."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("(file)", f"cannot read: {e.strerror or e}", str(path)) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("(syntax)", f"invalid TOML: {e}", str(path)) from e


def check_config_main(
    path: Path, kind: Literal["agent", "collector"], *, env: Mapping[str, str] | None = None
) -> int:
    """Validate without running: ``OK: <summary>`` on stdout and 0, or every error on stderr and 1."""
    try:
        if kind == "agent":
            summary = summarize_agent(load_agent_config(path, env=env))
        else:
            summary = summarize_collector(load_collector_config(path, env=env))
    except ConfigError as e:
        text = _text_or_empty(path)
        located = [(find_line(text, err.key), err) for err in getattr(e, "errors", (e,))]
        located.sort(key=lambda pair: pair[0][0] if pair[0] is not None else sys.maxsize)  # file order
        for found, err in located:
            print(err, file=sys.stderr)
            if found is not None:
                print(f"    {found[0]:>4} | {found[1]}", file=sys.stderr)
        return 1
    print(f"OK: {summary}")
    return 0


def summarize_agent(config: AgentConfig) -> str:
    """One line a person can check against what they meant to configure (no secrets)."""
    a, m, s = config.agent, config.mqtt, config.spool
    return (
        f"agent {a.site}/{a.camera_id}: capture {config.capture.kind}{_replayed(config)}{_decoder(config)}, "
        f"mqtt {m.host}:{m.port} ({_transport(config.mqtt.tls.enabled, m.protocol)}), "
        f"spool {s.directory} (max {s.max_bytes} bytes)"
    )


def summarize_collector(config: CollectorConfig) -> str:
    c, m = config.collector, config.mqtt
    return (
        f"collector {m.client_id}: archive {c.archive_root}, "
        f"mqtt {m.host}:{m.port} ({_transport(m.tls.enabled, m.protocol)}), subscribe {c.subscription!r}"
    )


def _replayed(config: AgentConfig) -> str:
    """A replayed file or folder, and whether it is there: the agent would stop at its start without it (a
    hint, not an error: the config may be checked where the footage is not, as Ansible does before copying)."""
    c = config.capture
    if c.kind not in ("file", "folder") or c.path is None:
        return ""
    there = c.path.is_file() if c.kind == "file" else c.path.is_dir()
    return f" {c.path}" if there else f" {c.path} (NOT FOUND here: the agent would stop at its start)"


def _decoder(config: AgentConfig) -> str:
    """Who will decode a video or RTSP source on this machine (``capture.decoder``; ffmpeg is looked up on PATH)."""
    c = config.capture
    if c.kind == "http" and c.ca_file is not None:
        return f" (its certificate checked against {c.ca_file})"
    if c.kind not in ("file", "rtsp"):
        return ""
    if c.ca_file is not None:
        return f" (decoded by OpenCV, its certificate checked against {c.ca_file})"
    found = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
    if c.decoder == "opencv":
        return " (decoded by OpenCV)"
    codec = config.codec
    pictures = ", its pictures coded" if codec.yuv else ""
    if found and c.decoder == "auto":
        return f" (decoded by ffmpeg where the video is limited-range yuv420p{pictures}, else OpenCV)"
    if found:
        return f" (decoded by ffmpeg{pictures})"
    if c.decoder == "auto":
        return " (decoded by OpenCV: ffmpeg is not installed here)"
    return " (decoder = 'ffmpeg', but ffmpeg and ffprobe are not on PATH here: the camera will not open)"


def _transport(tls: bool, protocol: str) -> str:
    return f"{'TLS' if tls else 'plain'}, MQTT {protocol}"


def _text_or_empty(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")


def find_line(text: str, key: str) -> tuple[int, str] | None:
    """Line number and text where ``key`` is set, else its nearest table's header; a cheap scan, not a parser.

    Handles ``[table]`` headers and ``key = …`` / ``dotted.key = …`` lines, which is what config files use.
    """
    table = ""
    headers: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            table = _normal(header.group(1))
            headers.setdefault(table, (number, line.rstrip()))
        elif assignment := _KEY.match(line):
            name = _normal(assignment.group(1))
            if (f"{table}.{name}" if table else name) == key:
                return number, line.rstrip()
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        if (found := headers.get(".".join(parts[:end]))) is not None:
            return found
    return None


def _normal(dotted: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in dotted.split("."))
