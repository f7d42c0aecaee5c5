"""The ``cctv-agent`` command line: one sub-command per job, each implemented in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from agent import __version__, process
from agent.errors import CctvError

log = logging.getLogger("agent")

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

DESCRIPTION = """\
Turn a fixed camera into a compact, exact (or bounded-error) frame stream.

Frames are keyed by SSIM; every other frame is coded as a residual against its key or the previous
frame, compressed with a context-modelled entropy coder (or PackBits and zstd), and written as
self-describing, checksummed records (docs/wire-format.md).
"""

EPILOG = """\
examples:
  cctv-agent encode clip.avi --out clip.cctv             exact, every pixel bit for bit
  cctv-agent encode frames/ --out f.cctv --tolerance 2    near-lossless: |error| <= 2
  cctv-agent decode clip.cctv --out frames/               back to lossless PNG
  cctv-agent bench clip.avi --frames 150 --json           ratio, ms/frame, peak RSS
"""


def build_parser() -> argparse.ArgumentParser:
    from agent.cli import codec_commands

    parser = argparse.ArgumentParser(
        prog="cctv-agent",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=LOG_LEVELS,
        help="log verbosity on stderr (default: INFO, or for run and collect the config file's log_level)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    codec_commands.register(sub)
    for module_name in ("agent_commands", "collector_commands", "archive_commands", "simulate_commands"):
        try:
            module = __import__(f"agent.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"agent.cli.{module_name}":
                raise
            continue
        module.register(sub)
    _log_level_after_the_command(parser)
    return parser


def _log_level_after_the_command(parser: argparse.ArgumentParser) -> None:
    """Let ``--log-level`` follow the command too (``cctv-agent decode f.cctv --out d --log-level DEBUG``),
    where people type it; given there, it overrides one given before the command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in {id(p): p for p in action.choices.values()}.values():
                command.add_argument(
                    "--log-level",
                    default=argparse.SUPPRESS,
                    choices=LOG_LEVELS,
                    help="log verbosity on stderr",
                )
                _log_level_after_the_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level or "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    process.configure()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CctvError as e:
        log.error("%s", e)
        return 1
    except BrokenPipeError:  # stdout piped into `head` and closed: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit's flush fails again
        return 1
    except OSError as e:  # a full disk, a read-only or missing folder: say which file and why, no traceback
        log.error("%s", f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e)
        return 1
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
