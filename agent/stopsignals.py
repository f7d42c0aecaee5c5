"""SIGTERM and SIGINT, acted on by a thread of their own rather than inside the signal handler.

Python runs a signal handler in the main thread between two bytecodes, which may be while that thread holds a
lock: inside ``Event.wait`` of the very event the handler sets, or in any ``with lock:``. ``Event.set`` then waits
for a lock its own thread holds, for ever. The agent hung this way once on SIGTERM (its main thread was waiting
for the simulated camera's next frame on the event its ``close()`` sets), until the test killed it; under systemd
that is a stop that ends in SIGKILL after ``TimeoutStopSec``.

So the handler only writes the signal's number to a pipe (no lock, no allocation worth the name), and a daemon
thread reads the pipe and calls the callback, where taking a lock only ever waits for another thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(
    callback: Callable[[signal.Signals], None], signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> None:
    """Call ``callback(signal)`` on a thread named ``signals`` for every one of ``signals`` this process receives.

    Must be called from the main thread (as ``signal.signal`` must). The callback may take locks, set events and
    log; it runs once per signal received, so a second Ctrl-C reaches it too.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)

    def handler(signum: int, _frame: FrameType | None) -> None:
        try:
            os.write(write_end, bytes((signum,)))
        except BlockingIOError:  # 64 kB of signals not yet acted on: one more adds nothing
            pass

    def watch() -> None:
        while chunk := os.read(read_end, 64):
            for signum in chunk:
                try:
                    callback(signal.Signals(signum))
                except Exception:  # the next SIGTERM must still be heard
                    log.exception("acting on %s failed", signal.Signals(signum).name)

    threading.Thread(target=watch, name="signals", daemon=True).start()
    for sig in signals:
        signal.signal(sig, handler)
