"""The data-centre archive: every record a collector receives, stored verbatim and indexed per camera.

Write side (the collector): :class:`Archive` — ``store(data, site)``, ``flush()``, ``apply_retention``.
Read side (anyone, at any time): :func:`iter_frames`, and ``info``/``verify`` in :mod:`.maintenance`.
Layout, versioned: ``docs/archive-format.md``.
"""

from agent.archive.paths import FORMAT_VERSION, validate_id
from agent.archive.reader import iter_frames
from agent.archive.store import SEGMENT_MAX_BYTES, Archive, StoreOutcome

__all__ = ["FORMAT_VERSION", "SEGMENT_MAX_BYTES", "Archive", "StoreOutcome", "iter_frames", "validate_id"]
