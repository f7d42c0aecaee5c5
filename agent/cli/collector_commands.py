"""``collect``: run the data-centre collector until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from agent.cli.args import POSITIVE
from agent.stopsignals import on_stop_signals

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "collect",
        help="receive records from the broker and file them in the archive",
        description="Subscribe (QoS 1, persistent session under mqtt.client_id) to the frame topics, verify "
        "each record, store it in the archive and acknowledge it only once it is on disk. Rejected messages "
        "go to the quarantine folder. SIGTERM or SIGINT: finish the batch in hand, flush, disconnect, exit 0 "
        "(docs/collector.md).",
    )
    p.add_argument("--config", type=Path, required=True, help="the collector's TOML file")
    p.add_argument("--stats-interval", type=POSITIVE, default=60.0, metavar="S",
                   help="log the counters every S seconds (default: %(default)s)")  # fmt: skip
    p.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    from agent.collector import Collector  # imported here: other commands need none of it
    from agent.config import load_collector_config

    config = load_collector_config(args.config)
    if args.log_level is None:  # --log-level, when given, wins over the file
        logging.getLogger().setLevel(config.collector.log_level)
    stop = threading.Event()

    def on_signal(signum: signal.Signals) -> None:
        log.info("%s received: finishing the current batch", signum.name)
        stop.set()

    on_stop_signals(on_signal)
    collector = Collector(config, stats_interval_s=args.stats_interval)
    log.info(
        "collecting %r into %s (quarantine %s)",
        config.collector.subscription, config.collector.archive_root, config.collector.quarantine,
    )  # fmt: skip
    collector.run(stop)
    return 0
