"""The MQTT topic layout: ``{prefix}/{site}/{camera}/{frame|status|stats|preview}``.

Ids are checked here, once, so that no topic the agent publishes can contain a wildcard, an empty level
or a control character, and so that the collector can trust the ids it parses out of a topic as file
names (``docs/topics.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_PREFIX_LEVELS = 8

FRAME = "frame"
STATUS = "status"
STATS = "stats"
PREVIEW = "preview"
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"


def validate_id(value: str, what: str) -> str:
    """``value`` if it is a usable id, else ``ValueError`` naming ``what`` and the rule it breaks."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not _ID.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a valid id: use 1–64 characters of A–Z, a–z, 0–9, '_', '.', '-' "
            "(no '/', '+', '#', spaces or control characters)"
        )
    if value.startswith("."):
        raise ValueError(f"{what} {value!r} is not a valid id: it must not start with '.'")
    return value


def validate_prefix(prefix: str, what: str = "topic prefix") -> str:
    """A prefix is one or more ids joined by '/', so deployments can nest (``acme/cctv``)."""
    if not isinstance(prefix, str):
        raise ValueError(f"{what} must be a string, not {type(prefix).__name__}")
    levels = prefix.split("/")
    if len(levels) > MAX_PREFIX_LEVELS:
        raise ValueError(f"{what} {prefix!r} has {len(levels)} levels; at most {MAX_PREFIX_LEVELS} allowed")
    for level in levels:
        validate_id(level, f"level of {what} {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class TopicSet:
    """The topics of one camera."""

    prefix: str
    site: str
    camera: str

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        validate_id(self.site, "site id")
        validate_id(self.camera, "camera id")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.camera}"

    @property
    def frame(self) -> str:
        """Wire records, or chunks of records too big for one message (QoS 1, not retained)."""
        return f"{self.base}/{FRAME}"

    @property
    def status(self) -> str:
        """Retained ``online``/``offline``; the last will sets ``offline``."""
        return f"{self.base}/{STATUS}"

    @property
    def stats(self) -> str:
        """JSON counters (QoS 0, not retained)."""
        return f"{self.base}/{STATS}"

    @property
    def preview(self) -> str:
        """An optional small JPEG (QoS 0, retained)."""
        return f"{self.base}/{PREVIEW}"

    @property
    def camera_key(self) -> str:
        """A stable key for per-camera state on the collector (what ``Reassembler.feed`` takes)."""
        return self.base


def frame_filter(prefix: str) -> str:
    """The subscription a collector uses to receive every camera's frames under ``prefix``."""
    return f"{validate_prefix(prefix)}/+/+/{FRAME}"


def parse_frame_topic(topic: str) -> tuple[str, str, str]:
    """Split a frame topic into ``(prefix, site, camera)``; raise ``ValueError`` if it is not one.

    The collector calls this on topics received from the broker, so it re-validates every level.
    """
    if not isinstance(topic, str):
        raise ValueError(f"topic must be a string, not {type(topic).__name__}")
    levels = topic.split("/")
    if len(levels) < 4 or levels[-1] != FRAME:
        raise ValueError(f"topic {topic!r} is not a frame topic: expected '<prefix>/<site>/<camera>/{FRAME}'")
    topics = TopicSet("/".join(levels[:-3]), levels[-3], levels[-2])
    return topics.prefix, topics.site, topics.camera
