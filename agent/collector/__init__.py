"""The data-centre side: receive frame records over MQTT and file them in the archive.

``service.Collector`` runs the loop (verify, store, flush, then acknowledge); ``link`` is its MQTT session,
``staging`` keeps chunks of incomplete records durable, ``quarantine`` keeps what was rejected.
See ``docs/collector.md``.
"""

from agent.collector.quarantine import Quarantine, Reason
from agent.collector.service import Collector
from agent.collector.stats import CollectorStats

__all__ = ["Collector", "CollectorStats", "Quarantine", "Reason"]
