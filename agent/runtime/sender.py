"""Move records from the spool to the broker, oldest first, and delete them only once acknowledged.

Threads: the sender's own thread owns ``_inflight``, ``_next_after`` and every spool ``peek``/``ack``.
Paho's thread only calls :meth:`_on_done`, which appends to ``_results`` under ``_lock`` and wakes the
sender; it never touches the spool, because a spool ``put`` may hold the spool's lock across an fsync.
The capture thread calls :meth:`wake` after each ``put``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from agent.errors import SpoolError
from agent.spool import Spool
from agent.transport.publisher import DeliveryResult, Publisher

log = logging.getLogger(__name__)

WAIT_S = 1.0
"""Longest sleep before looking at the stop flag again."""
REFUSED_RETRY_S = 30.0
"""After a broker refusal that needs an operator (ACL, size), try the spool again this much later."""


@dataclass
class SenderStats:
    delivered: int = 0
    delivered_bytes: int = 0
    refused: int = 0
    last_refusal: str | None = None
    oldest_unacked_s: float = 0.0


class Sender:
    """Keeps up to ``max_inflight`` records in flight; re-sends from the oldest unacknowledged on trouble."""

    def __init__(self, spool: Spool, publisher: Publisher, max_inflight: int) -> None:
        self._spool = spool
        self._publisher = publisher
        self._max_inflight = max_inflight
        self._lock = threading.Lock()
        self._results: deque[tuple[int, DeliveryResult]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, tuple[int, float]] = {}  # seq -> (bytes, monotonic time sent)
        self._next_after: int | None = None
        self._retry_at = 0.0
        self._reconnected = False
        self.stats = SenderStats()
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        publisher.add_connect_listener(self._on_connect)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def idle(self) -> bool:
        """Nothing in flight and nothing left in the spool."""
        with self._lock:
            pending = bool(self._results)
        return not pending and not self._inflight and len(self._spool) == 0

    @property
    def backing_off(self) -> bool:
        """The broker refused a record lately (ACL, size): nothing will be sent before the retry time."""
        return time.monotonic() < self._retry_at

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    # ----------------------------------------------------------------------------- paho's thread

    def _on_done(self, seq: int, result: DeliveryResult) -> None:
        with self._lock:
            self._results.append((seq, result))
        self._wake.set()

    def _on_connect(self) -> None:
        with self._lock:
            self._reconnected = True
        self._wake.set()

    # ---------------------------------------------------------------------------- sender's thread

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(WAIT_S)
            self._wake.clear()
            try:
                self._settle()
                self._send()
            except SpoolError as e:
                log.error("sender: %s", e)
                self._stop.wait(WAIT_S)
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            results = list(self._results)
            self._results.clear()
            reconnected, self._reconnected = self._reconnected, False
        resend = reconnected
        for seq, result in results:
            size, _sent = self._inflight.pop(seq, (0, 0.0))
            if result.ok:
                self._spool.ack(seq)
                self.stats.delivered += 1
                self.stats.delivered_bytes += size
                continue
            resend = True
            if result.reason_code is not None or not result.retryable:
                self.stats.refused += 1
                self.stats.last_refusal = result.reason
                self._retry_at = time.monotonic() + REFUSED_RETRY_S
                log.error(
                    "broker refused record seq=%d: %s; it stays in the spool, retry in %.0f s",
                    seq,
                    result.reason,
                    REFUSED_RETRY_S,
                )
            else:
                log.debug("record seq=%d not delivered (%s); will resend", seq, result.reason)
        if resend:
            self._next_after = None  # start again from the oldest record the spool still holds

    def _may_send(self) -> bool:
        return self._publisher.connected() and time.monotonic() >= self._retry_at and not self._stop.is_set()

    def _send(self) -> None:
        room = self._max_inflight - len(self._inflight)
        while room > 0 and self._may_send():
            entries = self._spool.peek(room, after=self._next_after)
            if not entries:
                break
            for entry in entries:
                self._next_after = entry.seq
                if entry.seq in self._inflight:
                    continue
                self._inflight[entry.seq] = (len(entry.data), time.monotonic())
                room -= 1
                self._publisher.publish_record(entry.seq, entry.data, self._on_done)
            self._settle_inline()

    def _settle_inline(self) -> None:
        """Refusals reported synchronously (not connected) are settled before peeking further."""
        with self._lock:
            pending = bool(self._results)
        if pending:
            self._settle()

    def oldest_unacked_age_s(self) -> float:
        if not self._inflight:
            return 0.0
        return time.monotonic() - min(sent for _size, sent in self._inflight.values())
