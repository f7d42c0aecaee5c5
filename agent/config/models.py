"""The configuration as typed, frozen values.

Each model checks its own ranges and the keys that only make sense together, so a value built in code is as
valid as one loaded from TOML. Problems are raised as :class:`~agent.errors.ConfigError` with the key relative
to the model (``"cert_file"``); the loader prefixes the table (``"mqtt.tls.cert_file"``). Every field is
documented, with its default, in the reference files ``config.toml`` and ``docs/collector.example.toml``;
a test keeps those files and these defaults equal.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from agent.codec.settings import CodecSettings, Entropy, Reference
from agent.config import checks
from agent.errors import ConfigError, ConfigErrors
from agent.urls import redact

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
CaptureKind = Literal["usb", "rtsp", "http", "file", "folder", "simulated"]
Decoder = Literal["auto", "ffmpeg", "opencv"]
MqttProtocol = Literal["5", "3.1.1"]

Problem = tuple[str, str]
"""A relative key path and a plain message."""


def setting(
    default: Any = MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    check: checks.Check | None = None,
    secret: bool = False,
) -> Any:
    """A field checked on construction (range, shape); ``secret`` keeps it out of reprs and errors."""
    metadata = {"lo": lo, "hi": hi, "check": check, "secret": secret}
    return field(default=default, repr=not secret, metadata=metadata)


def raise_problems(problems: list[Problem], source: str | None = None) -> None:
    """Raise one ConfigError, or a ConfigErrors listing all of them."""
    errors = [ConfigError(key, message, source) for key, message in problems]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class _Validated:
    """Runs the field checks declared with :func:`setting` and the model's own cross-field checks."""

    __slots__ = ()

    def __post_init__(self) -> None:
        self._fill()
        problems = list(_field_problems(self))
        if not problems:  # cross-field checks may assume every field is in range
            problems.extend(self._problems())
        raise_problems(problems)

    def _fill(self) -> None:
        """Derive defaults that depend on other fields (frozen: use ``object.__setattr__``)."""

    def _problems(self) -> list[Problem]:
        return []


def _field_problems(obj: object) -> list[Problem]:
    problems: list[Problem] = []
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if value is None or not f.metadata:
            continue
        message = checks.in_range(value, f.metadata["lo"], f.metadata["hi"])
        if message is None and f.metadata["check"] is not None:
            message = f.metadata["check"](value)
        if message is not None:
            problems.append((f.name, message))
    return problems


# --- [agent] ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentSection(_Validated):
    """Who this agent is and how it paces itself."""

    camera_id: str = setting(check=checks.name)
    """Names the camera in topics and archive paths, so it is restricted to a safe alphabet."""
    site: str = setting("default", check=checks.name)
    """Groups cameras (a building, a customer); the second topic level."""
    log_level: LogLevel = "INFO"
    stats_interval_s: float = setting(60.0, check=checks.positive)
    """How often a one-line summary (frames, keys, bytes, spool depth) is logged."""
    sample_interval_s: float = setting(0.0, lo=0)
    """0 = code every frame the source delivers; 10 = one frame every 10 s (time-lapse: a live camera, RTSP, HTTP
    MJPEG or USB, then decodes only the frames taken, not every one it receives)."""
    preview: bool = False
    """Also publish a small JPEG of the newest frame, for people and dashboards (not archived)."""
    preview_interval_s: float = setting(10.0, check=checks.positive)
    """At most one preview per this interval."""


# --- [capture] -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulatedSection(_Validated):
    """A synthetic scene, so the agent runs (and is tested) without a camera."""

    seed: int = 1
    width: int = setting(1280, lo=16, hi=8192)
    height: int = setting(720, lo=16, hi=8192)
    fps: float = setting(10.0, check=checks.positive)
    clock: bool = True
    """Draw a running clock, so consecutive frames differ the way a real scene does."""
    noise: float = setting(2.0, lo=0, hi=64)
    """Standard deviation of the sensor noise added to each frame, in grey levels."""
    day_length_s: float = setting(120.0, lo=0)
    """Scene seconds from noon to noon, so light changes slowly as outdoors; 0 keeps it noon."""


_URL_SCHEMES: dict[str, tuple[str, ...]] = {"rtsp": ("rtsp://", "rtsps://"), "http": ("http://", "https://")}


@dataclass(frozen=True, slots=True)
class CaptureSection(_Validated):
    """Where frames come from; ``kind`` picks the source and says which other keys it needs."""

    kind: CaptureKind
    device: str | int = "/dev/video0"
    """usb: a device node or a V4L2 index."""
    url: str | None = setting(None, secret=True)
    """rtsp: ``rtsp://`` or ``rtsps://``; http: ``http://`` or ``https://`` (a stream OpenCV reads). With the
    camera's password, if it has one (``password_file`` puts it there at load time): kept out of reprs."""
    password: str | None = setting(None, secret=True)
    """rtsp, http: the camera's password given apart from ``url`` (resolved by the loader: env,
    ``credential:NAME`` or literal); ``url`` names its user and, once loaded, carries it."""
    password_file: Path | None = None
    """rtsp, http: where the camera's password was read from (for messages; the secret is in ``url``)."""
    ca_file: Path | None = None
    """rtsps and https only: the camera's certificate must verify against this PEM file (the camera's own
    self-signed certificate, or the CA that signed it) and name the URL's host; such a camera is decoded by
    OpenCV. None = not verified by the ffmpeg child (see ``agent.capture.stream``)."""
    path: Path | None = None
    """file: a video file; folder: a directory of images replayed in name order."""
    width: int | None = setting(None, lo=16, hi=8192)
    """usb: the frame size asked of the camera; None = its own. Given together with height."""
    height: int | None = setting(None, lo=16, hi=8192)
    fps: float | None = setting(None, check=checks.positive)
    """usb: the rate asked of the camera, None = its own; file, folder: the rate the replay is paced to, None =
    as fast as its frames are coded."""
    fourcc: str | None = None
    """usb only: pixel format to ask the driver for, e.g. ``"MJPG"``."""
    open_timeout_s: float = setting(10.0, check=checks.positive)
    read_timeout_s: float = setting(10.0, check=checks.positive)
    stall_timeout_s: float = setting(30.0, check=checks.positive)
    """A source that delivers no new frame for this long is closed and reopened."""
    reconnect_max_s: float = setting(60.0, check=checks.positive)
    """Reopening backs off by doubling up to this cap."""
    loop: bool = False
    """file/folder: start again at the end instead of stopping."""
    decoder: Decoder = "auto"
    """file, rtsp: who decodes the video. ``ffmpeg``: an ffmpeg child, converted the same on every machine (on a
    Pi OpenCV's conversion makes frames that code 28-35 % larger); ``opencv``: OpenCV; ``auto``: ffmpeg where
    it is installed and the video is limited-range yuv420p, else OpenCV."""
    simulated: SimulatedSection = field(default_factory=SimulatedSection)

    def _problems(self) -> list[Problem]:
        problems: list[Problem] = []
        streams = self.kind in _URL_SCHEMES
        if streams and self.url is None:
            problems.append(("url", f"required when kind = {self.kind!r}"))
        elif streams and self.url is not None and not self.url.startswith(_URL_SCHEMES[self.kind]):
            schemes = " or ".join(_URL_SCHEMES[self.kind])
            got = redact(self.url)
            problems.append(("url", f"must start with {schemes} when kind = {self.kind!r}, got {got!r}"))
        elif not streams and self.url is not None:
            problems.append(("url", "only used when kind is 'rtsp' or 'http'"))
        problems.extend(
            (name, "only used when kind is 'rtsp' or 'http'")
            for name in ("password", "password_file")
            if not streams and getattr(self, name) is not None
        )
        if self.ca_file is not None:
            problems.extend(self._ca_file_problems())
        replays = self.kind in ("file", "folder")
        if replays and self.path is None:
            problems.append(("path", f"required when kind = {self.kind!r}"))
        elif not replays and self.path is not None:
            problems.append(("path", "only used when kind is 'file' or 'folder'"))
        if self.loop and not replays:
            problems.append(("loop", "only used when kind is 'file' or 'folder'"))
        if self.decoder != "auto" and self.kind not in ("file", "rtsp"):
            problems.append(("decoder", "only used when kind is 'file' or 'rtsp'"))
        problems.extend(
            (name, "only used when kind is 'usb'")
            for name in ("width", "height")
            if self.kind != "usb" and getattr(self, name) is not None
        )
        if self.fps is not None and self.kind not in ("usb", "file", "folder"):
            problems.append(("fps", "only used when kind is 'usb', 'file' or 'folder'"))
        if (self.width is None) != (self.height is None):
            given, missing = ("width", "height") if self.height is None else ("height", "width")
            problems.append((given, f"must be given together with {missing}"))
        if self.fourcc is not None and self.kind != "usb":
            problems.append(("fourcc", "only used when kind is 'usb'"))
        elif self.fourcc is not None and len(self.fourcc) != 4:
            problems.append(("fourcc", f"must be exactly 4 characters, got {self.fourcc!r}"))
        if self.kind == "usb" and isinstance(self.device, int) and self.device < 0:
            problems.append(("device", f"must be a device path or an index ≥ 0, got {self.device}"))
        if self.kind == "usb" and isinstance(self.device, str) and not self.device:
            problems.append(("device", "must not be empty"))
        return problems

    def _ca_file_problems(self) -> list[Problem]:
        if (
            self.kind not in _URL_SCHEMES
            or self.url is None
            or not self.url.startswith(("rtsps://", "https://"))
        ):
            return [("ca_file", "only used with an rtsps:// or https:// url")]
        if self.decoder == "ffmpeg":
            return [
                (
                    "ca_file",
                    "the ffmpeg child cannot check a camera's certificate (its RTSP client takes no CA file): "
                    "set decoder = 'auto' or 'opencv', which decode such a camera with OpenCV",
                )
            ]
        if any(c in str(self.ca_file) for c in "|;"):
            return [("ca_file", "must not hold '|' or ';' (OpenCV's option syntax)")]
        return []


# --- [codec] ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecSection(_Validated):
    """The fields and defaults of :class:`agent.codec.settings.CodecSettings` (a test keeps them equal)."""

    threshold: float = 0.5
    max_key_interval_frames: int = 120
    max_key_interval_s: float = 600.0
    reference: Reference = "previous"
    tolerance: int = 0
    ssim_downscale: int = 4
    zstd_level: int = 1
    packbits: bool = True
    entropy: Entropy = "auto"
    jpeg_chroma: bool = False
    yuv: bool = True

    def to_codec_settings(self) -> CodecSettings:
        """The encoder's settings; their own checks are reported under ``codec.<field>``."""
        try:
            return self._settings()
        except ValueError as e:
            raise ConfigError(f"codec.{_codec_field(e)}", str(e)) from e

    def _settings(self) -> CodecSettings:
        return CodecSettings(**{f.name: getattr(self, f.name) for f in fields(self)})

    def _problems(self) -> list[Problem]:
        try:
            self._settings()
        except ValueError as e:
            return [(_codec_field(e), str(e))]
        return []


def _codec_field(error: ValueError) -> str:
    """CodecSettings messages start with the field name (``"threshold must be within 0..1"``)."""
    first = str(error).split(" ", 1)[0]
    return first if first in CodecSettings.__dataclass_fields__ else "?"


# --- [mqtt] ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSection(_Validated):
    """TLS to the broker. File names may be ``credential:NAME`` or relative to ``$CREDENTIALS_DIRECTORY``."""

    enabled: bool = False
    ca_file: Path | None = None
    """CA bundle that signs the broker's certificate; None = the system's trust store."""
    cert_file: Path | None = None
    """Client certificate (mutual TLS); given together with key_file."""
    key_file: Path | None = None
    check_hostname: bool = True
    """Turn off only for a broker reached by an address its certificate does not name."""

    def _problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            problems.append((given, f"must be given together with {missing}"))
        if not self.enabled:
            problems.extend(
                (name, "only used when enabled = true")
                for name in ("ca_file", "cert_file", "key_file")
                if getattr(self, name) is not None
            )
            if not self.check_hostname:
                problems.append(("check_hostname", "only used when enabled = true"))
        return problems


@dataclass(frozen=True, slots=True)
class MqttSection(_Validated):
    """The broker connection; the agent and the collector share this table's shape."""

    host: str = setting("127.0.0.1", check=checks.non_empty)
    port: int = setting(1883, lo=1, hi=65535)
    """1883 plain; 8883 is the usual port with TLS."""
    protocol: MqttProtocol = "5"
    client_id: str = ""
    """Agent: empty = ``cctv-agent-{site}-{camera_id}``. Collector: required (keys its persistent session)."""
    username: str | None = setting(None, check=checks.non_empty)
    password: str | None = setting(None, secret=True)
    """The secret itself, as resolved by the loader (env, password_file, ``credential:NAME`` or literal)."""
    password_file: Path | None = None
    """Where the password was read from (for messages; the secret is in ``password``)."""
    keepalive_s: int = setting(30, lo=5, hi=65535)
    topic_prefix: str = setting("cctv", check=checks.topic_prefix)
    """First topic level: frames go to ``{topic_prefix}/{site}/{camera_id}/frame``."""
    max_payload_bytes: int = setting(262144, lo=1024, hi=268435455)
    """Largest record published; bigger frames are split or refused by the publisher, never sent."""
    max_inflight: int = setting(20, lo=1, hi=65535)
    """QoS 1 messages awaiting PUBACK at once."""
    reconnect_min_s: int = setting(1, lo=1, hi=3600)
    reconnect_max_s: int = setting(60, lo=1, hi=3600)
    """Reconnecting waits reconnect_min_s, then doubles the wait up to this cap."""
    tls: TlsSection = field(default_factory=TlsSection)

    def _problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.password is not None and self.username is None:
            problems.append(("password", "is set but username is not (a password is sent with a username)"))
        if self.reconnect_min_s > self.reconnect_max_s:
            problems.append(("reconnect_max_s", f"must be ≥ reconnect_min_s ({self.reconnect_min_s})"))
        return problems


# --- [spool] ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpoolSection(_Validated):
    """Records wait here, crash-safe, until the broker acknowledges them."""

    directory: Path = Path("/var/lib/cctv-agent/spool")
    """Relative paths are taken from the working directory (``/`` under systemd): write absolute ones."""
    max_bytes: int = setting(536870912, lo=1024)
    """Whole bytes (no "512MiB" strings). When full, the oldest groups are dropped first, a key at a time."""


# --- the agent -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentConfig(_Validated):
    """Everything the agent reads from ``config.toml``."""

    agent: AgentSection
    capture: CaptureSection
    codec: CodecSection = field(default_factory=CodecSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    spool: SpoolSection = field(default_factory=SpoolSection)

    def _fill(self) -> None:
        if not self.mqtt.client_id:
            client_id = f"cctv-agent-{self.agent.site}-{self.agent.camera_id}"
            object.__setattr__(self, "mqtt", replace(self.mqtt, client_id=client_id))

    def _problems(self) -> list[Problem]:
        if self.spool.max_bytes < self.mqtt.max_payload_bytes:
            return [("spool.max_bytes", f"must hold at least one record of mqtt.max_payload_bytes "
                     f"({self.mqtt.max_payload_bytes}), got {self.spool.max_bytes}")]  # fmt: skip
        return []


# --- the collector ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectorSection(_Validated):
    """Where the collector files records and how long it keeps them."""

    archive_root: Path
    quarantine_dir: Path | None = None
    """Records that fail their checksum or cannot be decoded; None = ``{archive_root}/quarantine``."""
    share_group: str | None = setting(None, check=checks.share_group)
    """Subscribe as ``$share/{share_group}/{topic_filter}`` so several collectors split the load."""
    topic_filter: str = setting("cctv/+/+/frame", check=checks.topic_filter)
    retention_days: int = setting(0, lo=0)
    """Delete archived days older than this; 0 = keep everything."""
    retention_bytes_per_camera: int = setting(0, lo=0)
    """Delete a camera's oldest days beyond this size; 0 = unlimited."""
    log_level: LogLevel = "INFO"

    @property
    def quarantine(self) -> Path:
        """The quarantine directory, with its default applied."""
        return self.quarantine_dir if self.quarantine_dir is not None else self.archive_root / "quarantine"

    @property
    def subscription(self) -> str:
        """The filter to subscribe to, shared when a group is set."""
        if self.share_group is None:
            return self.topic_filter
        return f"$share/{self.share_group}/{self.topic_filter}"


@dataclass(frozen=True, slots=True)
class CollectorConfig(_Validated):
    """Everything the collector reads from its TOML file."""

    collector: CollectorSection
    mqtt: MqttSection = field(default_factory=MqttSection)

    def _problems(self) -> list[Problem]:
        if not self.mqtt.client_id:
            return [("mqtt.client_id", "required for the collector (its persistent session is keyed by it)")]
        return []
