"""The collector's counters, logged once a minute and on exit."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass
class CollectorStats:
    """Totals since start. ``received`` counts MQTT messages; a chunked record is several of them."""

    received: int = 0
    bytes: int = 0
    """Payload bytes received."""
    chunks: int = 0
    records: int = 0
    """Complete records checked (whole, or reassembled from chunks)."""
    stored: int = 0
    duplicates: int = 0
    """Records the archive already held: redeliveries after a reconnect, an agent's replay."""
    quarantined: int = 0
    batches: int = 0
    acked: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def log(self, what: str) -> None:
        log.info(
            "%s: received=%d (%d bytes, %d chunks) records=%d stored=%d duplicates=%d quarantined=%d "
            "batches=%d acked=%d",
            what, self.received, self.bytes, self.chunks, self.records, self.stored, self.duplicates,
            self.quarantined, self.batches, self.acked,
        )  # fmt: skip
