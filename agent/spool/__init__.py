"""Crash-safe, bounded disk spool between the encoder and the publisher (see ``docs/spool.md``)."""

from agent.spool.entry import SpoolEntry
from agent.spool.spool import Spool

__all__ = ["Spool", "SpoolEntry"]
