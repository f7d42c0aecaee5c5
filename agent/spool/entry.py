"""The value the encoder hands to the spool."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import SpoolError
from agent.spool.files import HEADER_SIZE, MAX_DATA


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One encoded record plus the little the spool must know to evict whole key groups.

    ``key_seq`` names the group: a key entry has ``key_seq == seq``, a member carries its group key's seq.
    ``data`` is opaque to the spool.
    """

    seq: int
    key_seq: int
    is_key: bool
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.seq < 2**64:
            raise SpoolError(f"spool entry seq={self.seq}: outside 0..2**64-1")
        if self.is_key and self.key_seq != self.seq:
            raise SpoolError(f"spool entry seq={self.seq}: a key needs key_seq == seq, got {self.key_seq}")
        if not self.is_key and not 0 <= self.key_seq < self.seq:
            raise SpoolError(
                f"spool entry seq={self.seq}: a member needs an earlier key_seq, got {self.key_seq}"
            )
        if len(self.data) > MAX_DATA:
            raise SpoolError(f"spool entry seq={self.seq}: {len(self.data)} bytes is over the 4 GiB limit")

    @property
    def size(self) -> int:
        """Bytes the entry takes on disk, header included: the unit of ``max_bytes``."""
        return HEADER_SIZE + len(self.data)
