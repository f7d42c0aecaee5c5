"""The collector: frame messages from the broker, verified, filed in the archive, then acknowledged.

One thread (the caller of :meth:`Collector.run`) does all the work in batches: take what the inbox holds
(up to ``batch_max``), check and store each message, make the batch durable (archive flush, chunk staging
and quarantine fsync), and only then acknowledge it. Whatever was not acknowledged when the collector dies
is re-sent by the broker (QoS 1, persistent session) and the archive drops it as a duplicate, so a
``kill -9`` loses nothing and stores nothing twice. The only other thread is paho's (see ``link.py``).

Every message ends in exactly one of: stored, duplicate, staged (a chunk of an incomplete record), or
quarantined. Nothing a publisher sends can stop the loop; only a failure to write durably does (the batch
stays unacknowledged and the error propagates, so that systemd restarts the collector).
"""

from __future__ import annotations

import errno
import logging
import queue
import sqlite3
import threading
import time

from agent.archive.paths import find_cameras
from agent.archive.reader import CameraReader
from agent.archive.store import Archive, StoreOutcome
from agent.codec.wire import unpack_record
from agent.collector.link import Incoming, Link
from agent.collector.quarantine import Quarantine, Reason
from agent.collector.staging import ChunkStaging
from agent.collector.stats import CollectorStats
from agent.config.models import CollectorConfig
from agent.errors import ArchiveError, WireFormatError
from agent.sdnotify import Notifier
from agent.transport.chunks import Reassembler, is_chunk, parse_chunk
from agent.transport.topics import parse_frame_topic

log = logging.getLogger(__name__)

STAGING_DIR = ".collector-staging"
"""Under the archive root; a leading dot keeps it apart from site directories (ids cannot start with '.')."""
POLL_S = 0.5
"""How long the loop waits for a message before checking for a stop request or a timer."""
READY_WAIT_S = 10.0
"""How long start-up waits for the broker to confirm the subscription before telling systemd READY=1.

READY=1 then means "subscribed": a unit ordered After= this one (an agent on the same host, a test) publishes
only once this collector's session exists, so its first records are not lost to a subscription that did not
exist yet (the broker keeps QoS 1 messages only for sessions it knows). A broker that is down must not keep the
service from starting, so after this wait READY=1 comes anyway and the link connects when it can."""


class Collector:
    """Subscribes as configured and files every valid record in ``archive``; see the module docstring."""

    def __init__(
        self,
        config: CollectorConfig,
        archive: Archive | None = None,
        *,
        batch_max: int = 256,
        stats_interval_s: float = 60.0,
        retention_interval_s: float = 3600.0,
    ) -> None:
        c = config.collector
        self.config = config
        # one flush per batch instead of one per record
        self.archive = archive if archive is not None else Archive(c.archive_root, autoflush=False)
        self.batch_max = batch_max
        self.stats_interval_s = stats_interval_s
        self.retention_interval_s = retention_interval_s
        self.stats = CollectorStats()
        self.quarantine = Quarantine(c.quarantine)
        self.reassembler = Reassembler()
        self.staging = ChunkStaging(
            c.archive_root / STAGING_DIR,
            max_records=self.reassembler.max_pending,
            max_bytes=self.reassembler.max_pending_bytes,
        )
        # a site named like the quarantine folder would file cameras among the quarantined files
        root, qdir = c.archive_root.resolve(), c.quarantine.resolve()
        self._reserved_sites = {qdir.name} if qdir.parent == root else set()
        self._good_sites: set[str] = set()
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.link = Link(config.mqtt, c.subscription, self.inbox)
        self._done_chunks: list[tuple[str, int]] = []
        """Records completed from chunks in this batch, whose staged chunks go once it is flushed."""
        self._unstaged: dict[tuple[str, int], list[bytes]] = {}
        """Chunks received in this batch for records still incomplete: staged before the batch is acked."""
        self._next_stats = self._next_retention = 0.0

    # ------------------------------------------------------------------------------------- running

    def _wait_subscribed(self, stop: threading.Event, notifier: Notifier) -> bool:
        """Wait (up to READY_WAIT_S, feeding the watchdog) until the broker has confirmed the subscription."""
        deadline = time.monotonic() + READY_WAIT_S
        while not stop.is_set() and time.monotonic() < deadline:
            if self.link.wait_subscribed(POLL_S):
                return True
            notifier.watchdog()
        return self.link.wait_subscribed(0)

    def run(self, stop: threading.Event) -> CollectorStats:
        """Collect until ``stop`` is set; then finish the batch in hand, flush, disconnect and return."""
        self._recover_staged()
        now = time.monotonic()
        self._next_stats = now + self.stats_interval_s
        self._next_retention = now  # once at start, then every retention_interval_s
        self.link.start()
        notifier = Notifier()
        what = f"{self.config.collector.subscription} into {self.config.collector.archive_root}"
        if self._wait_subscribed(stop, notifier):
            notifier.ready(f"collecting {what}")
        else:
            log.warning(
                "not subscribed after %.0f s (is the broker reachable?): ready anyway, collecting once it is",
                READY_WAIT_S,
            )
            notifier.ready(f"waiting for the broker, then collecting {what}")
        try:
            while not stop.is_set():
                batch = self._take(POLL_S)
                if batch:
                    self.process(batch)
                self._timers()
                notifier.watchdog()  # the loop turns at least every POLL_S, busy or idle
        finally:
            notifier.stopping()
            self.link.stop()
            try:
                self.archive.close()
            finally:
                self.stats.log("collector stopped")
        return self.stats

    def _take(self, timeout_s: float) -> list[Incoming]:
        try:
            first = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.batch_max:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def process(self, batch: list[Incoming]) -> None:
        """Handle, make durable, acknowledge: the order that makes ``kill -9`` harmless."""
        for message in batch:
            self._handle(message)
        # chunks of records that completed within the batch are archived below: only the rest is staged
        for (topic, _seq), payloads in self._unstaged.items():
            for payload in payloads:
                self.staging.put(topic, payload)
        self._unstaged.clear()
        self.archive.flush()
        self.staging.sync()
        self.quarantine.sync()
        self.stats.acked += self.link.ack(batch)
        self.stats.batches += 1
        for topic, seq in self._done_chunks:  # archived: their staged chunks are no longer needed
            self.staging.discard(topic, seq)
        self._done_chunks.clear()

    def _timers(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.stats_interval_s
            self.stats.log("collector")
        if now >= self._next_retention:
            self._next_retention = now + self.retention_interval_s
            self._apply_retention()

    def _apply_retention(self) -> None:
        c = self.config.collector
        if not (c.retention_days or c.retention_bytes_per_camera):
            return
        for site, camera in find_cameras(c.archive_root):
            try:
                result = self.archive.apply_retention(
                    camera,
                    site=site,
                    max_age_days=c.retention_days or None,
                    max_bytes=c.retention_bytes_per_camera or None,
                )
            except ArchiveError as e:
                log.error("retention of %s/%s failed: %s", site, camera, e)
                continue
            if result.records:
                log.info(
                    "retention of %s/%s: deleted %d groups, %d records, %d bytes",
                    site, camera, result.groups, result.records, result.bytes,
                )  # fmt: skip

    # ------------------------------------------------------------------------------------- one message

    def _handle(self, message: Incoming) -> None:
        self.stats.received += 1
        self.stats.bytes += len(message.payload)
        topic = message.topic
        shown = repr(topic) if topic is not None else repr(message.raw_topic)
        if topic is None:
            self._reject(message.payload, shown, Reason.TOPIC, "topic is not UTF-8")
            return
        try:
            _prefix, site, camera = parse_frame_topic(topic)
        except ValueError as e:
            self._reject(message.payload, shown, Reason.TOPIC, str(e))
            return
        problem = self._site_problem(site)
        if problem is not None:
            self._reject(message.payload, shown, Reason.TOPIC, problem)
            return
        if is_chunk(message.payload):
            self.stats.chunks += 1
        duplicates = self.reassembler.duplicates
        try:
            record = self.reassembler.feed(topic, message.payload)
        except WireFormatError as e:
            self._reject(message.payload, shown, Reason.MALFORMED, str(e))
            return
        except Exception as e:  # a bug met by these bytes: see _unparsable
            self._unparsable(message.payload, shown, e)
            return
        if record is None:
            if self.reassembler.duplicates == duplicates:  # newly held in memory: stage it unless completed
                key = (topic, parse_chunk(message.payload)[0].seq)
                self._unstaged.setdefault(key, []).append(message.payload)
            return
        if is_chunk(message.payload):
            key = (topic, parse_chunk(message.payload)[0].seq)
            self._unstaged.pop(key, None)
            self._done_chunks.append(key)
        self._file(record, site, camera, shown)

    def _site_problem(self, site: str) -> str | None:
        """Why ``site`` cannot be a directory of the archive root, if it cannot (checked once per site)."""
        if site in self._good_sites:
            return None
        if site in self._reserved_sites:
            return f"site {site!r} is the name of the quarantine folder"
        path = self.config.collector.archive_root / site
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            return f"site {site!r} names a file of the archive root, not a site directory"
        self._good_sites.add(site)
        return None

    def _file(self, record: bytes, site: str, camera: str, shown: str) -> None:
        self.stats.records += 1
        try:
            header = unpack_record(record).header
        except WireFormatError as e:
            self._reject(record, shown, Reason.MALFORMED, str(e))
            return
        except Exception as e:  # a bug met by these bytes: see _unparsable
            self._unparsable(record, shown, e)
            return
        if header.camera_id != camera:
            detail = f"record names camera {header.camera_id!r}, topic names {camera!r}"
            self._reject(record, shown, Reason.CAMERA_MISMATCH, detail)
            return
        try:
            outcome = self.archive.store(record, site)
        except WireFormatError as e:
            self._reject(record, shown, Reason.MALFORMED, str(e))
            return
        except ArchiveError as e:
            if not _is_rejection(e):
                raise
            self._reject(record, shown, Reason.REJECTED, str(e))
            return
        if outcome is StoreOutcome.DUPLICATE:
            self.stats.duplicates += 1
            log.debug("camera %r seq=%d: duplicate, already archived", camera, header.seq)
        else:
            self.stats.stored += 1

    def _unparsable(self, payload: bytes, shown: str, error: Exception) -> None:
        """Quarantine a message whose bytes made the parser fail other than with WireFormatError: a bug, logged
        with its traceback. Why not let it stop the collector, as an archive error does: the message is not
        acknowledged, so the broker hands the same bytes to the next start, and every camera's collection
        would stop on one message (a record whose header length was shorter than the fixed header did that,
        with an IndexError, until 30421c8). Parsing reads only the message, so nothing else can be at fault."""
        log.error("parsing a message on %s failed unexpectedly (a bug)", shown[:200], exc_info=error)
        detail = f"the collector could not parse it ({type(error).__name__}: {error}); please report this"
        self._reject(payload, shown, Reason.MALFORMED, detail)

    def _reject(self, payload: bytes, shown: str, reason: Reason, detail: str) -> None:
        self.stats.quarantined += 1
        path = self.quarantine.keep(payload, shown, reason, detail)
        log.warning(
            "quarantined message on %s (%s, %d bytes): %s%s",
            shown[:200], reason.value, len(payload), detail[:300], f" -> {path.name}" if path else "",
        )  # fmt: skip

    def _recover_staged(self) -> None:
        """Feed chunks a previous run acknowledged but could not complete back into the reassembler.

        A run killed between acknowledging a record and deleting its chunks leaves chunks of a record the
        archive already holds; the rest of them will never come again, so they are deleted here.
        """
        staged: dict[tuple[str, int], list[bytes]] = {}
        for topic, payload in self.staging.load():
            staged.setdefault((topic, parse_chunk(payload)[0].seq), []).append(payload)
        for (topic, seq), payloads in staged.items():
            try:
                _prefix, site, camera = parse_frame_topic(topic)
            except ValueError as e:
                log.warning("staged chunks for %r dropped: %s", topic, e)
                self.staging.discard(topic, seq)
                continue
            if self._archived(site, camera, seq):
                self.staging.discard(topic, seq)
                continue
            for payload in payloads:
                try:
                    record = self.reassembler.feed(topic, payload)
                except WireFormatError as e:
                    log.warning("staged chunk for %r seq=%d dropped: %s", topic, seq, e)
                    continue
                if record is not None:
                    self._done_chunks.append((topic, seq))
                    self._file(record, site, camera, repr(topic))
        if staged:
            self.archive.flush()
            self.quarantine.sync()
            for topic, seq in self._done_chunks:
                self.staging.discard(topic, seq)
            self._done_chunks.clear()
            log.info(
                "recovered chunks of %d records; %d still incomplete",
                len(staged),
                self.reassembler.pending_records,
            )

    def _archived(self, site: str, camera: str, seq: int) -> bool:
        try:
            with CameraReader(self.config.collector.archive_root, site, camera) as reader:
                return reader.row(seq) is not None
        except (ArchiveError, sqlite3.Error):  # no such camera yet, or an id the archive refuses
            return False


# errors of one record's path (a site or camera named like a file the archive keeps): quarantine the record
_PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


def _is_rejection(error: ArchiveError) -> bool:
    """Whether the archive refused this record (quarantine it) rather than failed to write (stop).

    The archive raises refusals (a different record under a stored seq, a hostile id, a path leaving the
    root) without a cause, and wraps I/O and SQLite failures. A full disk or a camera locked by another
    writer must stop the collector, unacknowledged; an unusable path must not, or one message would stop
    it again after every restart.
    """
    cause = error.__cause__
    if cause is None:
        return True
    return (
        isinstance(cause, OSError) and not isinstance(cause, BlockingIOError) and cause.errno in _PATH_ERRNOS
    )
