"""``cctv-agent run``: the edge agent's main loop.

Threads: the main thread captures, encodes and writes each record to the spool (it owns the source, the
encoder and the seq counter); the sender thread publishes from the spool (see ``sender.py``); paho's thread
runs the MQTT callbacks; the ``signals`` thread (``agent.stopsignals``) turns SIGTERM and SIGINT into
``request_stop``, which sets ``_stop`` and interrupts the source, waking a blocked read; every wait in the loop is
at most a second, so a stop is noticed within one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy.typing as npt

from agent.capture.base import CaptureSource, Frame
from agent.codec.encoder import FrameEncoder
from agent.codec.native import HOW_TO_GET
from agent.codec.wire import Kind, Stage, pack_record
from agent.config import AgentConfig
from agent.errors import CaptureError, SpoolError
from agent.runtime.sender import Sender
from agent.runtime.wiring import make_source, make_spool, mqtt_settings
from agent.sdnotify import Notifier
from agent.spool import Spool, SpoolEntry
from agent.stopsignals import on_stop_signals
from agent.transport.publisher import Publisher

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 20.0
"""On stop, how long to wait for the spool to drain while the broker is reachable (TimeoutStopSec is 60)."""
PREVIEW_WIDTH = 640


def first_seq(state: dict[str, object], last_spooled: int | None) -> int:
    """Where this run's sequence numbers start: after everything this spool ever reserved or held.

    A spool with no history (a new or reinstalled camera) starts at the UTC clock in microseconds rather than
    0, so that a camera set up again never reuses a seq the archive already holds (the collector would refuse
    those frames as conflicts). Cameras produce far fewer than a million frames a second, so the seqs of the
    earlier installation stay below it.
    """
    reserved = state.get("next_seq")
    if isinstance(reserved, int) and reserved >= 0:
        return max(reserved, (last_spooled if last_spooled is not None else -1) + 1)
    if last_spooled is not None:
        return last_spooled + 1
    return time.time_ns() // 1000


def frame_interval(config: AgentConfig) -> float:
    """Seconds the loop leaves between frames: ``agent.sample_interval_s`` (a time-lapse), and for a replay
    (``file``, ``folder``) with ``capture.fps`` one frame every 1/fps, so that the recording plays at that rate,
    as a camera would film it; without ``fps`` a replay is read as fast as its frames are coded."""
    interval = config.agent.sample_interval_s
    if config.capture.kind in ("file", "folder") and config.capture.fps:
        interval = max(interval, 1.0 / config.capture.fps)
    return interval


@dataclass
class AgentStats:
    frames: int = 0
    keys: int = 0
    raw_bytes: int = 0
    encoded_bytes: int = 0
    lost_frames: int = 0
    capture_errors: int = 0
    encode_s: float = 0.0


class EdgeAgent:
    """Capture → SSIM key selection → codec → spool → MQTT, until stopped or the source ends."""

    def __init__(
        self, config: AgentConfig, *, drain_at_end: bool = True, source: CaptureSource | None = None
    ) -> None:
        """``source`` replaces the configured one (the demo films through a recording wrapper)."""
        self.config = config
        self._given_source = source
        self.drain_at_end = drain_at_end
        self.notifier = Notifier()
        self.stats = AgentStats()
        self._stop = threading.Event()
        self._source: CaptureSource | None = None
        self._spool: Spool | None = None
        self._started = time.monotonic()

    # ------------------------------------------------------------------------------------ control

    def request_stop(self, signum: signal.Signals | None = None) -> None:
        """End the loop; callable from any thread, but not from inside a signal handler (it takes locks the main
        thread may hold: see ``agent.stopsignals``). The main thread then closes the source and drains."""
        if signum is not None:
            log.info("received %s: stopping", signum.name)
        self._stop.set()
        if self._source is not None:
            self._source.interrupt()

    def install_signal_handlers(self) -> None:
        on_stop_signals(self.request_stop)

    # ---------------------------------------------------------------------------------- main loop

    def run(self) -> int:
        cfg = self.config
        spool = self._spool = make_spool(cfg)
        state = spool.load_state()
        next_seq = first_seq(state, spool.last_seq)
        encoder = FrameEncoder(cfg.agent.camera_id, cfg.codec.to_codec_settings(), first_seq=next_seq)
        publisher = Publisher(mqtt_settings(cfg.mqtt, site=cfg.agent.site, camera=cfg.agent.camera_id))
        sender = Sender(spool, publisher, cfg.mqtt.max_inflight)
        log.info(
            "camera %s/%s: starting at seq=%d, %d records waiting in the spool (%d bytes); entropy stage %s",
            cfg.agent.site,
            cfg.agent.camera_id,
            next_seq,
            len(spool),
            spool.bytes_used,
            encoder.settings.entropy_stage.name,
        )
        if encoder.settings.entropy == "auto" and encoder.settings.entropy_stage is not Stage.CTX:
            log.warning("coding with zstd, 17-29 %% larger than CTX: %s", HOW_TO_GET)
        publisher.start()
        sender.start()
        source = self._source = self._given_source or make_source(cfg)
        try:
            source.open()
            if self._stop.is_set():  # a signal that came while opening closed nothing yet
                source.close()
            self.notifier.ready(f"capturing from {cfg.capture.kind}")
            self._loop(source, encoder, spool, sender, publisher)
        finally:
            source.close()
            self.notifier.stopping("stopping: flushing the spool")
            self._drain(sender, publisher)
            sender.stop()
            publisher.stop()
            self._log_figures(spool, sender, final=True)
            spool.close()
        return 0

    def _loop(
        self, source: CaptureSource, encoder: FrameEncoder, spool: Spool, sender: Sender, publisher: Publisher
    ) -> None:
        cfg = self.config
        sample_s = frame_interval(cfg)
        next_due = 0.0
        next_stats = time.monotonic() + cfg.agent.stats_interval_s
        next_preview = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + cfg.agent.stats_interval_s
                self._log_figures(spool, sender)
                publisher.publish_stats(self._stats_payload(spool, sender))
            if sample_s and now < next_due:
                self._stop.wait(min(1.0, next_due - now))
                continue
            try:
                frame = source.read()
            except CaptureError as e:
                self.stats.capture_errors += 1
                log.warning("%s", e)
                continue
            if frame is None:
                if not self._stop.is_set():
                    log.info("source ended after %d frames", self.stats.frames)
                break
            next_due = (next_due or now) + sample_s if sample_s else 0.0
            if sample_s and next_due < now:
                next_due = now + sample_s
            self._process(frame, encoder, spool, sender)
            self.notifier.watchdog()
            if cfg.agent.preview and now >= next_preview:
                next_preview = now + cfg.agent.preview_interval_s
                self._publish_preview(frame, publisher)

    def _process(self, frame: Frame, encoder: FrameEncoder, spool: Spool, sender: Sender) -> None:
        if spool.needs_key():
            encoder.request_key()
        t0 = time.perf_counter()
        record = encoder.encode(
            frame.image, frame.wall_time_ns, clock_synced=frame.clock_synced, picture=frame.picture
        )
        data = pack_record(record)
        self.stats.encode_s += time.perf_counter() - t0
        h = record.header
        self.stats.frames += 1
        self.stats.keys += h.kind is Kind.KEY
        self.stats.raw_bytes += frame.image.nbytes
        self.stats.encoded_bytes += len(data)
        try:
            # The seq is reserved on disk before the record: a crash in between leaves a gap, never a reuse.
            spool.save_state({"next_seq": h.seq + 1})
            spool.put(SpoolEntry(h.seq, h.key_seq, h.kind is Kind.KEY, data))
        except SpoolError as e:
            self.stats.lost_frames += 1
            encoder.request_key()
            log.error("frame seq=%d lost: %s", h.seq, e)
            return
        sender.wake()

    def _drain(self, sender: Sender, publisher: Publisher) -> None:
        """Give a reachable broker a chance to take what is spooled; what remains stays on disk for next time."""
        if not self.drain_at_end:
            return
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while (
            not sender.idle()
            and publisher.connected()
            and not sender.backing_off
            and time.monotonic() < deadline
        ):
            sender.wake()
            time.sleep(0.05)

    # ------------------------------------------------------------------------------------ figures

    def _stats_payload(self, spool: Spool, sender: Sender) -> dict[str, object]:
        s = self.stats
        elapsed = max(1e-9, time.monotonic() - self._started)
        counters = spool.counters()
        return {
            "camera": self.config.agent.camera_id,
            "frames": s.frames,
            "keys": s.keys,
            "fps": round(s.frames / elapsed, 3),
            "ratio": round(s.raw_bytes / s.encoded_bytes, 3) if s.encoded_bytes else None,
            "encode_ms_per_frame": round(1000 * s.encode_s / s.frames, 2) if s.frames else None,
            "delivered": sender.stats.delivered,
            "refused": sender.stats.refused,
            "spool_depth": len(spool),
            "spool_bytes": spool.bytes_used,
            "lag_s": round(sender.oldest_unacked_age_s(), 3),
            "lost_frames": s.lost_frames,
            "evicted_records": counters["evicted_records"],
            "evicted_groups": counters["evicted_groups"],
            "capture_errors": s.capture_errors,
        }

    def _log_figures(self, spool: Spool, sender: Sender, final: bool = False) -> None:
        p = self._stats_payload(spool, sender)
        line = (
            f"frames={p['frames']} keys={p['keys']} fps={p['fps']} ratio={p['ratio']} "
            f"delivered={p['delivered']} spool={p['spool_depth']} ({p['spool_bytes']} B) lag={p['lag_s']}s "
            f"lost={p['lost_frames']} evicted={p['evicted_records']}/{p['evicted_groups']} groups"
        )
        log.info("%s%s", "final: " if final else "", line)
        self.notifier.status(line)

    def _publish_preview(self, frame: Frame, publisher: Publisher) -> None:
        image: npt.NDArray[Any] = frame.image
        if image.shape[1] > PREVIEW_WIDTH:
            scale = PREVIEW_WIDTH / image.shape[1]
            image = cv2.resize(
                image, (PREVIEW_WIDTH, round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA
            )
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
        if ok:
            publisher.publish_preview(jpeg.tobytes())
