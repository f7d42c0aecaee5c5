"""SIGTERM must stop a process whose main thread holds the lock the stop takes (agent.stopsignals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The main thread sits inside the stop event's own lock, where Event.wait spends its bytecodes between the
# lock's acquire and its release, when SIGTERM comes. A handler that set the event itself would wait there for
# ever; the signals thread waits only until the main thread lets go.
CHILD = textwrap.dedent(
    """
    import signal, sys, threading, time
    from agent.stopsignals import on_stop_signals

    stop = threading.Event()
    seen = []
    def on_signal(sig):
        seen.append((sig.name, threading.current_thread().name))
        stop.set()

    {install}
    with stop._cond:  # what Event.wait holds between its bytecodes
        print("ready", flush=True)
        time.sleep(1.5)  # SIGTERM arrives here and its handler runs in this thread, inside the lock
    print("stopped" if stop.wait(10) else "not stopped", seen, flush=True)
    """
)


def _run(install: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(install=install)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    return child


def test_a_stop_signal_is_acted_on_outside_the_lock_the_main_thread_holds() -> None:
    child = _run("on_stop_signals(on_signal)")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert out.strip() == "stopped [('SIGTERM', 'signals')]"


def test_setting_the_event_inside_the_handler_is_the_hang_it_avoids() -> None:
    """The control: the same child with the handler the agent had before hangs (so the test above can fail)."""
    child = _run("signal.signal(signal.SIGTERM, lambda *_: on_signal(signal.SIGTERM))")
    with pytest.raises(subprocess.TimeoutExpired):
        child.communicate(timeout=5)
    child.kill()
    child.communicate()


def test_every_signal_reaches_the_callback_in_order_even_after_it_raised() -> None:
    script = textwrap.dedent(
        """
        import os, signal, threading
        from agent.stopsignals import on_stop_signals

        got = []
        done = threading.Event()
        def on_signal(sig):
            got.append(sig.name)
            if len(got) == 1:
                raise RuntimeError("the first stop fails")  # logged; the thread goes on
            if len(got) == 3:
                done.set()

        on_stop_signals(on_signal)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
        print(done.wait(10), got)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "True ['SIGINT', 'SIGTERM', 'SIGINT']"
    assert "acting on SIGINT failed" in done.stderr
    assert "RuntimeError: the first stop fails" in done.stderr
