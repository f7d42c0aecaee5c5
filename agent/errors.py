"""The one error tree of cctv-agent.

Every error carries the context a log line needs (camera, path, key, reason) so that callers can log
``str(err)`` and nothing else. Wrap lower-level exceptions with ``raise ... from e``.
"""

from __future__ import annotations


class CctvError(Exception):
    """Base of every error this package raises on purpose."""


class WireFormatError(CctvError):
    """A record (or a concatenation of records) is malformed, truncated, corrupted or hostile.

    This is the only exception that decoding untrusted bytes may raise: see ``docs/wire-format.md``.
    """


class MissingReferenceError(CctvError):
    """A member record refers to a frame the decoder does not hold (yet)."""

    def __init__(self, camera_id: str, seq: int, ref_seq: int) -> None:
        super().__init__(
            f"camera {camera_id!r}: record seq={seq} needs reference seq={ref_seq}, which is not held"
        )
        self.camera_id = camera_id
        self.seq = seq
        self.ref_seq = ref_seq


class ConfigError(CctvError):
    """The configuration is invalid; the message names the key path."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")
        self.key = key
        self.message = message
        self.source = source


class CaptureError(CctvError):
    """A camera or a replayed source could not be opened or read."""


class SpoolError(CctvError):
    """The on-disk spool could not store or return a record."""


class PublishError(CctvError):
    """The broker refused a message or the connection failed."""


class ArchiveError(CctvError):
    """The archive could not store, index or return a record."""


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass; ``errors`` lists each (one per line in ``str``)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(errors[0].key, errors[0].message, errors[0].source)
        self.errors = tuple(errors)
        self.args = ("\n".join(str(e) for e in self.errors),)
