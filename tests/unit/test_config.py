"""The config models, the loader's messages, secrets, check-config, and the two reference files."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from agent.codec.settings import CodecSettings
from agent.config import (
    AgentConfig,
    AgentSection,
    CodecSection,
    CollectorConfig,
    MqttSection,
    SimulatedSection,
    TlsSection,
    check_config_main,
    find_line,
    load_agent_config,
    load_collector_config,
    parse_agent_config,
    parse_collector_config,
    read_toml,
)
from agent.errors import ConfigError, ConfigErrors

ROOT = Path(__file__).resolve().parents[2]
AGENT_REFERENCE = ROOT / "config.toml"
COLLECTOR_REFERENCE = ROOT / "docs" / "collector.example.toml"

MINIMAL: dict[str, Any] = {"agent": {"camera_id": "cam1"}, "capture": {"kind": "simulated"}}


def with_(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``dotted`` (``"mqtt.tls.enabled"``) set to ``value``."""
    out = _deep_copy(base)
    *tables, key = dotted.split(".")
    node = out
    for table in tables:
        node = node.setdefault(table, {})
    node[key] = value
    return out


def _deep_copy(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in table.items()}


def errors_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    """Each error as ``key: message``, without the source."""
    return [f"{e.key}: {e.message}" for e in getattr(excinfo.value, "errors", (excinfo.value,))]


# --- the reference files ---------------------------------------------------------------------------------

_HEADER = re.compile(r"^\[([\w.]+)\]$")
_SETTING = re.compile(r"^(# )?([a-z_][a-z0-9_]*) = (.+)$")


def documented(text: str) -> dict[str, tuple[Any, bool]]:
    """Each ``key = value`` and ``# key = value`` (a default) line of a reference file, by full key path."""
    table, out = "", {}
    for line in text.splitlines():
        if header := _HEADER.match(line):
            table = header[1]
        elif setting := _SETTING.match(line):
            key = f"{table}.{setting[2]}"
            assert key not in out, f"{key} documented twice"
            out[key] = tomllib.loads(f"v = {setting[3]}")["v"], bool(setting[1])
    return out


def model_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every leaf field of a model tree, by full key path."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from model_fields(hints[f.name], key)
        else:
            yield key, f


def as_table(config: Any) -> dict[str, Any]:
    """A loaded config back as the table a TOML file would give (unset values left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = as_table(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


@pytest.mark.parametrize(
    ("path", "cls"), [(AGENT_REFERENCE, AgentConfig), (COLLECTOR_REFERENCE, CollectorConfig)]
)
def test_reference_file_documents_every_key_with_the_model_default(path: Path, cls: type) -> None:
    docs = documented(path.read_text(encoding="utf-8"))
    fields = dict(model_fields(cls))
    assert sorted(set(fields) - set(docs)) == [], "keys missing from the reference file"
    assert sorted(set(docs) - set(fields)) == [], "keys in the reference file that the model does not have"
    for key, f in fields.items():
        value, is_default = docs[key]
        if f.default is dataclasses.MISSING or f.default is None or not is_default:
            continue  # required, unset by default (the file shows an example), or set by the file
        default = str(f.default) if isinstance(f.default, Path) else f.default
        assert value == default, key
        assert type(value) is type(default) or {type(value), type(default)} == {int, float}, key


def test_agent_reference_runs_out_of_the_box() -> None:
    config = load_agent_config(AGENT_REFERENCE, env={})
    assert (config.agent.camera_id, config.capture.kind) == ("cam1", "simulated")
    assert config.mqtt.client_id == "cctv-agent-default-cam1"
    assert config.mqtt.password is None


@pytest.mark.parametrize(
    ("path", "load"), [(AGENT_REFERENCE, load_agent_config), (COLLECTOR_REFERENCE, load_collector_config)]
)
def test_uncommenting_every_default_changes_nothing(tmp_path: Path, path: Path, load: Any) -> None:
    cls = AgentConfig if path == AGENT_REFERENCE else CollectorConfig
    unset = {key.rsplit(".", 1)[1] for key, f in model_fields(cls) if f.default is None}
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        setting = _SETTING.match(line)
        if setting and setting[1] and setting[2] not in unset:
            line = line.removeprefix("# ")
        lines.append(line)
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("\n".join(lines), encoding="utf-8")
    assert explicit.read_text(encoding="utf-8") != path.read_text(encoding="utf-8")
    assert load(explicit, env={}) == load(path, env={})


def test_collector_example_round_trips() -> None:
    config = load_collector_config(COLLECTOR_REFERENCE, env={})
    assert config.collector.archive_root == Path("/srv/cctv/archive")
    assert config.collector.quarantine == Path("/srv/cctv/archive/quarantine")
    assert config.collector.subscription == "cctv/+/+/frame"
    assert config.mqtt.client_id == "cctv-collector-1"
    assert parse_collector_config(as_table(config), env={}) == config


def test_agent_config_round_trips() -> None:
    config = parse_agent_config(
        with_(with_(MINIMAL, "capture.kind", "usb"), "capture.device", 2) | {"codec": {"tolerance": 3}},
        env={},
    )
    assert config.capture.device == 2
    assert parse_agent_config(as_table(config), env={}) == config


def test_codec_section_mirrors_codec_settings() -> None:
    mine = {f.name: (f.type, f.default) for f in dataclasses.fields(CodecSection)}
    theirs = {f.name: (f.type, f.default) for f in dataclasses.fields(CodecSettings)}
    assert mine == theirs
    assert CodecSection().to_codec_settings() == CodecSettings()
    assert CodecSection(tolerance=5, reference="key").to_codec_settings() == CodecSettings(
        tolerance=5, reference="key"
    )


def test_to_codec_settings_names_the_codec_key() -> None:
    broken = object.__new__(CodecSection)  # bypasses the section's own check, as a future field might
    for f in dataclasses.fields(CodecSection):
        object.__setattr__(broken, f.name, f.default)
    object.__setattr__(broken, "zstd_level", 40)
    with pytest.raises(
        ConfigError, match=r"^codec\.zstd_level: zstd_level must be within 1\.\.19"
    ) as excinfo:
        broken.to_codec_settings()
    assert isinstance(excinfo.value.__cause__, ValueError)


# --- messages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("mqtt.hots", "x", "mqtt.hots: unknown key (did you mean 'host'?)"),
        ("spol", {}, "spol: unknown key (did you mean 'spool'?)"),
        ("agent.zebra", 1, "agent.zebra: unknown key"),
        ("codec.threshold", "0.5", "codec.threshold: expected a number, got string '0.5'"),
        ("codec.tolerance", 1.5, "codec.tolerance: expected an integer, got float 1.5"),
        ("codec.packbits", "yes", "codec.packbits: expected true or false, got string 'yes'"),
        ("mqtt.port", True, "mqtt.port: expected an integer, got boolean true"),
        ("mqtt.host", 5, "mqtt.host: expected a string, got integer 5"),
        ("mqtt", 5, "mqtt: expected a table, got integer 5"),
        ("mqtt.tls", "on", "mqtt.tls: expected a table, got string 'on'"),
        (
            "capture.kind",
            "usbb",
            "capture.kind: expected one of 'usb', 'rtsp', 'http', 'file', 'folder', "
            "'simulated', got string 'usbb' (did you mean 'usb'?)",
        ),
        (
            "mqtt.protocol",
            5,
            """mqtt.protocol: expected one of '5', '3.1.1', got integer 5 (write it as a string: "5")""",
        ),
        ("capture.device", 1.0, "capture.device: expected a string or an integer, got float 1.0"),
        ("capture.path", "", "capture.path: expected a path, got an empty string"),
        ("mqtt.port", 70000, "mqtt.port: must be within 1..65535, got 70000"),
        ("mqtt.max_payload_bytes", 100, "mqtt.max_payload_bytes: must be within 1024..268435455, got 100"),
        (
            "spool.max_bytes",
            2048,
            "spool.max_bytes: must hold at least one record of mqtt.max_payload_bytes (262144), got 2048",
        ),
        ("agent.stats_interval_s", 0, "agent.stats_interval_s: must be > 0, got 0.0"),
        ("agent.sample_interval_s", -1, "agent.sample_interval_s: must be ≥ 0, got -1.0"),
        (
            "agent.log_level",
            "debug",
            "agent.log_level: expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', "
            "'CRITICAL', got string 'debug' (did you mean 'DEBUG'?)",
        ),
        ("codec.tolerance", 99, "codec.tolerance: tolerance must be within 0..32, got 99"),
        (
            "codec.reference",
            "next",
            "codec.reference: expected one of 'key', 'previous', 'auto', got string 'next'",
        ),
        (
            "mqtt.topic_prefix",
            "cctv/",
            "mqtt.topic_prefix: level of topic prefix 'cctv/' '' is not a valid id: use 1–64 characters of "
            "A–Z, a–z, 0–9, '_', '.', '-' (no '/', '+', '#', spaces or control characters)",
        ),
        ("mqtt.keepalive_s", 4, "mqtt.keepalive_s: must be within 5..65535, got 4"),
        ("mqtt.reconnect_min_s", 90, "mqtt.reconnect_max_s: must be ≥ reconnect_min_s (90)"),
        ("mqtt.tls.cert_file", "c.pem", "mqtt.tls.cert_file: must be given together with key_file"),
        ("capture.simulated.noise", 100.0, "capture.simulated.noise: must be within 0..64, got 100.0"),
        ("agent.started", tomllib.loads("d = 2024-01-01")["d"], "agent.started: unknown key"),
    ],
)
def test_one_mistake_one_message(dotted: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(with_(MINIMAL, dotted, value), env={})
    assert expected in errors_of(excinfo)
    assert str(excinfo.value).startswith("<memory>: ")


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        ({"kind": "rtsp"}, "capture.url: required when kind = 'rtsp'"),
        (
            {"kind": "rtsp", "url": "http://cam/"},
            "capture.url: must start with rtsp:// or rtsps:// when kind = 'rtsp', got 'http://cam/'",
        ),
        (
            {"kind": "http", "url": "rtsp://cam/"},
            "capture.url: must start with http:// or https:// when kind = 'http', got 'rtsp://cam/'",
        ),
        ({"kind": "usb", "url": "rtsp://cam/"}, "capture.url: only used when kind is 'rtsp' or 'http'"),
        ({"kind": "file"}, "capture.path: required when kind = 'file'"),
        ({"kind": "folder"}, "capture.path: required when kind = 'folder'"),
        (
            {"kind": "rtsp", "url": "rtsp://c/", "path": "/x"},
            "capture.path: only used when kind is 'file' or 'folder'",
        ),
        ({"kind": "usb", "loop": True}, "capture.loop: only used when kind is 'file' or 'folder'"),
        ({"kind": "usb", "width": 640}, "capture.width: must be given together with height"),
        (
            {"kind": "rtsp", "url": "rtsp://c/", "width": 640, "height": 480},
            "capture.width: only used when kind is 'usb'",
        ),
        ({"kind": "file", "path": "/x", "height": 480}, "capture.height: only used when kind is 'usb'"),
        (
            {"kind": "rtsp", "url": "rtsp://c/", "fps": 10},
            "capture.fps: only used when kind is 'usb', 'file' or 'folder'",
        ),
        ({"kind": "usb", "height": 480}, "capture.height: must be given together with width"),
        ({"kind": "usb", "fourcc": "MJPEG"}, "capture.fourcc: must be exactly 4 characters, got 'MJPEG'"),
        ({"kind": "simulated", "fourcc": "MJPG"}, "capture.fourcc: only used when kind is 'usb'"),
        ({"kind": "usb", "device": -1}, "capture.device: must be a device path or an index ≥ 0, got -1"),
        (
            {"kind": "folder", "path": "/x", "decoder": "ffmpeg"},
            "capture.decoder: only used when kind is 'file' or 'rtsp'",
        ),
        (
            {"kind": "http", "url": "http://c/", "decoder": "ffmpeg"},
            "capture.decoder: only used when kind is 'file' or 'rtsp'",
        ),
        (
            {"kind": "file", "path": "/x", "decoder": "gstreamer"},
            "capture.decoder: expected one of 'auto', 'ffmpeg', 'opencv', got string 'gstreamer'",
        ),
        ({}, "capture.kind: missing required key"),
    ],
)
def test_capture_kind_needs_its_keys(capture: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config({"agent": {"camera_id": "c"}, "capture": capture}, env={})
    assert expected in errors_of(excinfo)


@pytest.mark.parametrize(
    "capture",
    [
        {"kind": "usb"},
        {"kind": "usb", "device": 0, "width": 640, "height": 480, "fps": 15, "fourcc": "YUYV"},
        {"kind": "rtsp", "url": "rtsps://cam.example:322/live"},
        {"kind": "http", "url": "https://cam.example/mjpeg"},
        {"kind": "file", "path": "/srv/a.avi", "loop": True},
        {"kind": "file", "path": "/srv/a.avi", "decoder": "opencv"},
        {"kind": "rtsp", "url": "rtsp://cam.example/live", "decoder": "ffmpeg"},
        {"kind": "folder", "path": "frames", "fps": 2.5},
    ],
)
def test_capture_kinds_accept_their_keys(capture: dict[str, Any]) -> None:
    config = parse_agent_config({"agent": {"camera_id": "c"}, "capture": capture}, env={})
    assert config.capture.kind == capture["kind"]


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        (
            {"kind": "rtsp", "url": "rtsp://cam/live"},
            "capture.ca_file: only used with an rtsps:// or https:// url",
        ),
        (
            {"kind": "http", "url": "http://cam/mjpeg"},
            "capture.ca_file: only used with an rtsps:// or https:// url",
        ),
        (
            {"kind": "file", "path": "/x"},
            "capture.ca_file: only used with an rtsps:// or https:// url",
        ),
        (
            {"kind": "rtsp", "url": "rtsps://cam/live", "decoder": "ffmpeg"},
            "capture.ca_file: the ffmpeg child cannot check a camera's certificate (its RTSP client takes no "
            "CA file): set decoder = 'auto' or 'opencv', which decode such a camera with OpenCV",
        ),
    ],
)
def test_a_camera_ca_file_only_where_it_is_used(
    tmp_path: Path, capture: dict[str, Any], expected: str
) -> None:
    (tmp_path / "camera-ca.pem").write_text("PEM\n")
    table = capture | {"ca_file": "camera-ca.pem"}
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config({"agent": {"camera_id": "c"}, "capture": table}, env={}, base_dir=tmp_path)
    assert expected in errors_of(excinfo)


def test_a_camera_ca_file_is_found_as_the_tls_files_are(tmp_path: Path) -> None:
    """Relative to the config (or ``$CREDENTIALS_DIRECTORY``), or ``credential:NAME``; missing: an error."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "camera-ca.pem").write_text("PEM\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "cam-ca").write_text("PEM\n")

    def capture(ca_file: str) -> dict[str, Any]:
        return {
            "agent": {"camera_id": "c"},
            "capture": {"kind": "rtsp", "url": "rtsps://c/", "ca_file": ca_file},
        }

    config = parse_agent_config(capture("camera-ca.pem"), env={}, base_dir=tmp_path / "conf")
    assert config.capture.ca_file == tmp_path / "conf" / "camera-ca.pem"
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    config = parse_agent_config(capture("credential:cam-ca"), env=env, base_dir=tmp_path / "conf")
    assert config.capture.ca_file == tmp_path / "creds" / "cam-ca"
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(capture("missing.pem"), env={}, base_dir=tmp_path / "conf")
    assert f"capture.ca_file: file not found: {tmp_path / 'conf' / 'missing.pem'}" in errors_of(excinfo)
    odd = tmp_path / "conf" / "a;b.pem"
    odd.write_text("PEM\n")
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(capture(str(odd)), env={})
    assert "capture.ca_file: must not hold '|' or ';' (OpenCV's option syntax)" in errors_of(excinfo)


def test_a_replay_with_fps_is_paced_and_a_camera_is_not() -> None:
    from agent.runtime.agent import frame_interval

    def interval(capture: dict[str, Any], agent: dict[str, Any] | None = None) -> float:
        return frame_interval(
            parse_agent_config({"agent": {"camera_id": "c", **(agent or {})}, "capture": capture}, env={})
        )

    assert interval({"kind": "folder", "path": "frames", "fps": 4}) == 0.25
    assert interval({"kind": "file", "path": "a.avi", "fps": 4}, {"sample_interval_s": 10}) == 10
    assert interval({"kind": "file", "path": "a.avi"}) == 0  # as fast as it is coded
    assert interval({"kind": "usb", "fps": 4}) == 0  # the camera keeps its own pace
    assert interval({"kind": "usb", "fps": 4}, {"sample_interval_s": 2}) == 2


@pytest.mark.parametrize("name", ["a", "cam1", "Cam_1.front-door", "-x", "_", "x" * 64, "0"])
def test_valid_names(name: str) -> None:
    config = parse_agent_config(with_(with_(MINIMAL, "agent.camera_id", name), "agent.site", name), env={})
    assert config.mqtt.client_id == f"cctv-agent-{name}-{name}"


@pytest.mark.parametrize("name", ["", ".hidden", "x" * 65, "a b", "a/b", "caméra", "a+b", "#"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(with_(with_(MINIMAL, "agent.camera_id", name), "agent.site", name), env={})
    keys = [e.split(":")[0] for e in errors_of(excinfo)]
    assert keys == ["agent.camera_id", "agent.site"]


def test_required_keys_are_named() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config({}, env={})
    assert errors_of(excinfo) == [
        "agent.camera_id: missing required key",
        "capture.kind: missing required key",
    ]
    with pytest.raises(ConfigError) as excinfo:
        parse_collector_config({}, env={})
    assert errors_of(excinfo) == ["collector.archive_root: missing required key"]


def test_every_mistake_is_reported_in_one_pass() -> None:
    data = {
        "agent": {"camera_id": ".x", "colour": 1},
        "capture": {"kind": "rtsp"},
        "mqtt": {"port": "1883", "tls": {"cert_file": "c.pem", "enabled": True}},
    }
    with pytest.raises(ConfigErrors) as excinfo:
        parse_agent_config(data, source="site.toml", env={})
    lines = str(excinfo.value).splitlines()
    assert len(lines) == len(excinfo.value.errors) >= 5
    assert all(line.startswith("site.toml: ") for line in lines)
    keys = {e.key for e in excinfo.value.errors}
    assert {"agent.colour", "agent.camera_id", "capture.url", "mqtt.port", "mqtt.tls.cert_file"} <= keys


def test_tls_files_only_with_tls_enabled() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(with_(MINIMAL, "mqtt.tls.ca_file", "/etc/ssl/ca.pem"), env={})
    assert errors_of(excinfo) == ["mqtt.tls.ca_file: only used when enabled = true"]


def test_collector_rules() -> None:
    base = {"collector": {"archive_root": "/a"}, "mqtt": {"client_id": "c1"}}
    config = parse_collector_config(with_(base, "collector.share_group", "g"), env={})
    assert config.collector.subscription == "$share/g/cctv/+/+/frame"
    cases = {
        "mqtt.client_id": (
            "",
            "mqtt.client_id: required for the collector (its persistent session is keyed by it)",
        ),
        "collector.topic_filter": (
            "cctv/#/frame",
            "collector.topic_filter: '#' must be the last level, got 'cctv/#/frame'",
        ),
        "collector.share_group": (
            "a/b",
            "collector.share_group: must be a non-empty name without '/', '+' or '#', got 'a/b'",
        ),
        "collector.retention_days": (-1, "collector.retention_days: must be ≥ 0, got -1"),
    }
    for dotted, (value, expected) in cases.items():
        with pytest.raises(ConfigError) as excinfo:
            parse_collector_config(with_(base, dotted, value), env={})
        assert errors_of(excinfo) == [expected]


def test_models_validate_themselves_and_are_frozen() -> None:
    with pytest.raises(ConfigError, match=r"^camera_id: must be 1–64"):
        AgentSection(camera_id="no spaces")
    with pytest.raises(ConfigError, match="cert_file: must be given together with key_file"):
        TlsSection(enabled=True, cert_file=Path("/c.pem"))
    section = AgentSection(camera_id="c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        section.camera_id = "d"  # type: ignore[misc]


def test_explicit_client_id_is_kept() -> None:
    config = parse_agent_config(with_(MINIMAL, "mqtt.client_id", "pi-7"), env={})
    assert config.mqtt.client_id == "pi-7"


# --- TOML files and check-config -------------------------------------------------------------------------


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[agent]\ncamera_id = "c"\nsite = \n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 3, column 8") as excinfo:
        load_agent_config(path, env={})
    assert excinfo.value.source == str(path)
    assert isinstance(excinfo.value.__cause__, tomllib.TOMLDecodeError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_agent_config(tmp_path / "nope.toml", env={})


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(AGENT_REFERENCE, "agent", env={}) == 0
    out, err = capsys.readouterr()
    assert out == (
        "OK: agent default/cam1: capture simulated, mqtt 127.0.0.1:1883 (plain, MQTT 5), "
        "spool /var/lib/cctv-agent/spool (max 536870912 bytes)\n"
    )
    assert err == ""
    assert check_config_main(COLLECTOR_REFERENCE, "collector", env={}) == 0
    assert capsys.readouterr().out.startswith("OK: collector cctv-collector-1: archive /srv/cctv/archive")


@pytest.mark.parametrize(
    ("decoder", "path_has_ffmpeg", "codec", "says"),
    [
        (
            "auto",
            True,
            "",
            "capture rtsp (decoded by ffmpeg where the video is limited-range yuv420p, its pictures coded, else "
            "OpenCV), ",
        ),
        ("ffmpeg", True, "tolerance = 2", "capture rtsp (decoded by ffmpeg, its pictures coded), "),
        ("ffmpeg", True, "tolerance = 1", "capture rtsp (decoded by ffmpeg, its pictures coded), "),
        ("ffmpeg", True, "yuv = false", "capture rtsp (decoded by ffmpeg), "),
        ("auto", False, "", "capture rtsp (decoded by OpenCV: ffmpeg is not installed here), "),
        (
            "ffmpeg",
            False,
            "",
            "capture rtsp (decoder = 'ffmpeg', but ffmpeg and ffprobe are not on PATH here",
        ),
        ("opencv", True, "", "capture rtsp (decoded by OpenCV), "),
    ],
)
def test_check_config_says_who_decodes_video(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    decoder: str,
    path_has_ffmpeg: bool,
    codec: str,
    says: str,
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    if path_has_ffmpeg:
        for name in ("ffmpeg", "ffprobe"):
            (tools / name).write_text("#!/bin/sh\n", encoding="utf-8")
            (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    path = tmp_path / "site.toml"
    path.write_text(
        f'[agent]\ncamera_id = "cam1"\n[capture]\nkind = "rtsp"\nurl = "rtsp://cam/live"\ndecoder = "{decoder}"\n'
        f"[codec]\n{codec}\n",
        encoding="utf-8",
    )
    assert check_config_main(path, "agent", env={}) == 0
    assert says in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kind", "url", "says"),
    [
        (
            "rtsp",
            "rtsps://cam/live",
            "capture rtsp (decoded by OpenCV, its certificate checked against {}), ",
        ),
        ("http", "https://cam/mjpeg", "capture http (its certificate checked against {}), "),
    ],
)
def test_check_config_says_a_camera_with_a_ca_file_is_checked_and_decoded_by_opencv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, url: str, says: str
) -> None:
    """Even with ffmpeg installed (it is on CI's PATH): the child cannot check the certificate."""
    (tmp_path / "camera-ca.pem").write_text("PEM\n", encoding="utf-8")
    path = tmp_path / "site.toml"
    path.write_text(
        f'[agent]\ncamera_id = "cam1"\n[capture]\nkind = "{kind}"\nurl = "{url}"\nca_file = "camera-ca.pem"\n',
        encoding="utf-8",
    )
    assert check_config_main(path, "agent", env={}) == 0
    assert says.format(tmp_path / "camera-ca.pem") in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_check_config_names_a_replay_and_says_when_it_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Not an error (the config may be checked where the footage is not), but the summary says so."""
    replay = tmp_path / ("clip.avi" if kind == "file" else "frames")
    path = tmp_path / "site.toml"
    path.write_text(
        f'[agent]\ncamera_id = "cam1"\n[capture]\nkind = "{kind}"\npath = "{replay}"\n', encoding="utf-8"
    )
    assert check_config_main(path, "agent", env={}) == 0
    assert (
        f"capture {kind} {replay} (NOT FOUND here: the agent would stop at its start)"
        in capsys.readouterr().out
    )
    if kind == "file":
        replay.write_bytes(b"")
    else:
        replay.mkdir()
    assert check_config_main(path, "agent", env={}) == 0
    out = capsys.readouterr().out
    assert f"capture {kind} {replay}" in out
    assert "NOT FOUND" not in out


def test_check_config_lists_errors_with_their_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.toml"
    text = '[agent]\ncamera_id = "cam1"\n\n[capture]\nkind = "rtsp"\n\n[mqtt]\nhots = "broker"\n'
    text += 'password = "credential:pw"\n[mqtt.tls]\nenabled = true\nkey_file = "k.pem"\n'
    path.write_text(text, encoding="utf-8")
    (tmp_path / "k.pem").write_text("key", encoding="utf-8")
    assert check_config_main(path, "agent", env={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: capture.url: required when kind = 'rtsp'",
        "       4 | [capture]",
        f"{path}: mqtt.hots: unknown key (did you mean 'host'?)",
        '       8 | hots = "broker"',
        f"{path}: mqtt.password: 'credential:pw' needs $CREDENTIALS_DIRECTORY (systemd sets it with "
        "LoadCredential=)",
        '       9 | password = "credential:pw"',
        f"{path}: mqtt.tls.key_file: must be given together with cert_file",
        '      12 | key_file = "k.pem"',
    ]


def test_check_config_reports_syntax_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[agent\n", encoding="utf-8")
    assert check_config_main(path, "collector", env={}) == 1
    assert capsys.readouterr().err.startswith(f"{path}: (syntax): invalid TOML: ")


def test_find_line_handles_dotted_keys_and_falls_back_to_the_table() -> None:
    text = '[mqtt]\ntls.ca_file = "x"\n[ "capture" . simulated ]\n  seed=3\n'
    assert find_line(text, "mqtt.tls.ca_file") == (2, 'tls.ca_file = "x"')
    assert find_line(text, "capture.simulated.seed") == (4, "  seed=3")
    assert find_line(text, "capture.simulated.fps") == (3, '[ "capture" . simulated ]')
    assert find_line(text, "spool.max_bytes") is None


# --- secrets ---------------------------------------------------------------------------------------------


def secret_file(directory: Path, name: str, text: str = "s3cret\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def mqtt(**keys: Any) -> dict[str, Any]:
    return MINIMAL | {"mqtt": {"username": "cam1", **keys}}


def test_password_from_an_absolute_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw")
    config = parse_agent_config(mqtt(password_file=str(path)), env={})
    assert (config.mqtt.password, config.mqtt.password_file) == ("s3cret", path)
    assert "s3cret" not in repr(config)


def test_relative_password_file_is_found_in_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    secret_file(creds, "mqtt-password", "from-systemd")
    secret_file(tmp_path / "conf", "mqtt-password", "next-to-config")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    config = parse_agent_config(mqtt(password_file="mqtt-password"), env=env, base_dir=tmp_path / "conf")
    assert config.mqtt.password == "from-systemd"
    config = parse_agent_config(mqtt(password_file="mqtt-password"), env={}, base_dir=tmp_path / "conf")
    assert config.mqtt.password == "next-to-config"


def test_password_from_a_named_credential(tmp_path: Path) -> None:
    secret_file(tmp_path, "mqtt", "cred\r\n")
    config = parse_agent_config(
        mqtt(password="credential:mqtt"), env={"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert config.mqtt.password == "cred"
    assert config.mqtt.password_file == tmp_path / "mqtt"


def test_load_from_file_with_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    secret_file(creds, "pw", "p")
    secret_file(creds, "client.pem", "cert")
    secret_file(creds, "client.key", "key")
    ca = secret_file(tmp_path, "ca.pem", "ca")
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\ncamera_id = "c"\n[capture]\nkind = "simulated"\n'
        f'[mqtt]\nport = 8883\nusername = "u"\npassword_file = "pw"\n'
        f'[mqtt.tls]\nenabled = true\nca_file = "{ca}"\n'
        f'cert_file = "credential:client.pem"\nkey_file = "client.key"\n',
        encoding="utf-8",
    )
    config = load_agent_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.mqtt.password == "p"
    assert config.mqtt.tls == TlsSection(True, ca, creds / "client.pem", creds / "client.key", True)


def test_environment_password_wins(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw")
    config = parse_agent_config(mqtt(password_file=str(path)), env={"CCTV_MQTT_PASSWORD": "from-env"})
    assert config.mqtt.password == "from-env"
    config = parse_agent_config(mqtt(), env={"CCTV_MQTT_PASSWORD": "only-env"})
    assert config.mqtt.password == "only-env"


def test_literal_password_is_allowed_but_never_shown() -> None:
    config = parse_agent_config(mqtt(password="hunter2"), env={})
    assert config.mqtt.password == "hunter2"
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(config.mqtt)
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(mqtt(password=12345678), env={})
    assert errors_of(excinfo) == ["mqtt.password: expected a string, got a value that is not shown (secret)"]


@pytest.mark.parametrize(
    ("keys", "env", "expected"),
    [
        (
            {"password": "a", "password_file": "/p"},
            {},
            "mqtt.password_file: give either password or password_file",
        ),
        ({"password_file": "/nonexistent/pw"}, {}, "mqtt.password_file: file not found: /nonexistent/pw"),
        ({"password": "credential:pw"}, {}, "mqtt.password: 'credential:pw' needs $CREDENTIALS_DIRECTORY"),
        (
            {"password": "credential:../pw"},
            {"CREDENTIALS_DIRECTORY": "/"},
            "mqtt.password: 'credential:../pw': a credential name is one file name",
        ),
        (
            {"tls": {"enabled": True, "ca_file": "credential:ca"}},
            {"CREDENTIALS_DIRECTORY": "/nonexistent"},
            "mqtt.tls.ca_file: file not found: /nonexistent/ca",
        ),
    ],
)
def test_secret_mistakes(keys: dict[str, Any], env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(mqtt(**keys), env=env)
    assert any(e.startswith(expected) for e in errors_of(excinfo)), errors_of(excinfo)


def test_empty_and_unreadable_secret_files(tmp_path: Path) -> None:
    empty = secret_file(tmp_path, "empty", "\n")
    with pytest.raises(ConfigError, match=f"mqtt.password_file: file is empty: {empty}"):
        parse_agent_config(mqtt(password_file=str(empty)), env={})
    if os.geteuid() == 0:
        return  # root reads anything
    locked = secret_file(tmp_path, "locked")
    locked.chmod(0)
    with pytest.raises(ConfigError, match="file not readable by this user"):
        parse_agent_config(mqtt(password_file=str(locked)), env={})


def test_password_needs_username() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(MINIMAL | {"mqtt": {"password": "p"}}, env={})
    assert errors_of(excinfo) == [
        "mqtt.password: is set but username is not (a password is sent with a username)"
    ]
    assert MqttSection(username="u", password="p").password == "p"


def camera(**keys: Any) -> dict[str, Any]:
    return MINIMAL | {"capture": {"kind": "rtsp", "url": "rtsp://viewer@192.0.2.10:554/s?ch=1", **keys}}


def test_the_cameras_password_from_a_file_goes_into_its_url_and_stays_out_of_reprs(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    secret_file(creds, "camera-password", "p@ss w/rd:#1\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    config = parse_agent_config(camera(password_file="camera-password"), env=env)
    assert config.capture.url == "rtsp://viewer:p%40ss%20w%2Frd%3A%231@192.0.2.10:554/s?ch=1"
    assert urlsplit(config.capture.url).password == "p%40ss%20w%2Frd%3A%231"
    assert unquote(urlsplit(config.capture.url).password or "") == "p@ss w/rd:#1"
    assert config.capture.password_file == creds / "camera-password"
    assert "p%40ss" not in repr(config)
    assert "p@ss" not in repr(config)
    config = parse_agent_config(camera(password="credential:camera-password"), env=env)
    assert config.capture.url == "rtsp://viewer:p%40ss%20w%2Frd%3A%231@192.0.2.10:554/s?ch=1"


def test_the_cameras_password_from_the_environment_wins_even_over_the_url(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw", "from-file")
    env = {"CCTV_CAMERA_PASSWORD": "from-env"}
    assert parse_agent_config(camera(password_file=str(path)), env=env).capture.url.startswith(
        "rtsp://viewer:from-env@"
    )
    inline = MINIMAL | {"capture": {"kind": "rtsp", "url": "rtsp://viewer:old@[2001:db8::5]:554/s"}}
    assert parse_agent_config(inline, env=env).capture.url == "rtsp://viewer:from-env@[2001:db8::5]:554/s"
    assert parse_agent_config(inline, env={}).capture.url == "rtsp://viewer:old@[2001:db8::5]:554/s"
    # Only a camera with a URL takes it: a simulated one is not concerned.
    assert parse_agent_config(MINIMAL, env=env).capture.url is None


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        (
            {"kind": "rtsp", "url": "rtsp://viewer:inline@h/s", "password": "p"},
            "capture.url: holds a password, and password or password_file gives one too",
        ),
        (
            {"kind": "rtsp", "url": "rtsp://h/s", "password": "p"},
            "capture.url: cannot take the password: it names no user for the password",
        ),
        ({"kind": "simulated", "password": "p"}, "capture.password: only used when kind is 'rtsp' or 'http'"),
        (
            {"kind": "rtsp", "url": "rtsp://viewer@h/s", "password": "p", "password_file": "/p"},
            "capture.password_file: give either password or password_file",
        ),
        (
            {"kind": "rtsp", "url": "rtsp://viewer@h/s", "password_file": "/nonexistent/pw"},
            "capture.password_file: file not found: /nonexistent/pw",
        ),
        (
            {"kind": "rtsp", "url": "rstp://viewer:hunter2@h/s"},
            "capture.url: must start with rtsp:// or rtsps:// when kind = 'rtsp', got 'rstp://viewer:***@h/s'",
        ),
    ],
)
def test_camera_password_mistakes(capture: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_agent_config(MINIMAL | {"capture": capture}, env={})
    assert any(e.startswith(expected) for e in errors_of(excinfo)), errors_of(excinfo)
    assert not any("hunter2" in e or "inline" in e for e in errors_of(excinfo))


# --- what the config feeds -------------------------------------------------------------------------------


def test_simulated_section_mirrors_scene_settings() -> None:
    from agent.simulate.scene import SceneSettings

    mine = {f.name: (f.type, f.default) for f in dataclasses.fields(SimulatedSection)}
    assert mine == {f.name: (f.type, f.default) for f in dataclasses.fields(SceneSettings)}


def test_reference_mqtt_section_is_accepted_by_the_publisher_settings() -> None:
    from agent.transport.settings import MqttSettings

    reference = with_(read_toml(AGENT_REFERENCE), "mqtt.username", "u")
    config = parse_agent_config(reference, env={"CCTV_MQTT_PASSWORD": "p"})
    m = config.mqtt
    settings = MqttSettings(
        host=m.host,
        port=m.port,
        protocol=m.protocol,
        client_id=m.client_id,
        username=m.username,
        password=m.password,
        tls=m.tls.enabled,
        keepalive_s=m.keepalive_s,
        max_payload_bytes=m.max_payload_bytes,
        max_inflight=m.max_inflight,
        topic_prefix=m.topic_prefix,
        site=config.agent.site,
        camera=config.agent.camera_id,
        reconnect_min_s=m.reconnect_min_s,
        reconnect_max_s=m.reconnect_max_s,
    )
    assert settings.topics.prefix == "cctv"
