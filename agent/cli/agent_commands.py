"""``run`` and ``check-config``: the edge agent as a service, and its config checked without running."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the edge agent: capture, encode, spool, publish (the systemd service)",
        description="Capture frames from the configured camera, key them by SSIM, encode them exactly (or within "
        "the configured tolerance), keep each record in the crash-safe disk spool and publish it over MQTT; a "
        "record leaves the spool only when the broker acknowledged it. Stops cleanly on SIGTERM/SIGINT. Under "
        "systemd (Type=notify) it reports readiness, watchdog pings while frames flow, and a STATUS line.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/cctv-agent/config.toml"),
        help="the TOML config (default: %(default)s); see config.toml in the source for every key",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "check-config",
        help="validate a config file without running (exit 0 when valid, 1 otherwise)",
        description="Load FILE as the agent's config (or, with --collector, the collector's), resolve secrets, and "
        "print 'OK: …' or every problem as FILE: key.path: message, with the offending line.",
    )
    p.add_argument("file", type=Path, help="the TOML file to check")
    p.add_argument(
        "--collector", action="store_true", help="check a collector config instead of an agent config"
    )
    p.set_defaults(handler=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.config import check_config_main

    return check_config_main(args.file, "collector" if args.collector else "agent")


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import load_agent_config
    from agent.runtime.agent import EdgeAgent

    config = load_agent_config(args.config)
    if args.log_level is None:  # --log-level, when given, wins over the file
        logging.getLogger().setLevel(config.agent.log_level)
    agent = EdgeAgent(config)
    agent.install_signal_handlers()
    return agent.run()
