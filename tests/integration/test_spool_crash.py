"""The spool against real failures: a writer killed with SIGKILL mid-stream, and a disk that fills up."""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.spool import Spool, SpoolEntry

REPO = Path(__file__).resolve().parents[2]

# Puts self-checking records in a loop. It prints "begin" just before put(), the seq once put() has
# returned, and, before an ack, the seq it is about to acknowledge. It keeps its next seq with save_state,
# as the agent does.
WRITER = """
import hashlib, os, sys
from pathlib import Path
from agent.spool import Spool, SpoolEntry

spool = Spool(Path(sys.argv[1]), 1 << 30)
seq = max(spool.load_state().get("next_seq", 1), (spool.last_seq or 0) + 1)
print("ready", seq, flush=True)
noise = os.urandom(4 << 20)
key_seq = None
while True:
    if key_seq is None or seq % 6 == 0 or spool.needs_key():
        key_seq = seq
    size = 10_000 + (seq * 7919) % (3 << 20) if seq % 5 else 10_000
    body = seq.to_bytes(8, "little") + noise[seq % 1000 : seq % 1000 + size]
    entry = SpoolEntry(seq, key_seq, key_seq == seq, hashlib.sha256(body).digest() + body)
    print("begin", seq, flush=True)
    spool.put(entry)
    print("put", seq, flush=True)
    if seq % 4 == 0:
        oldest = spool.peek(limit=1)[0].seq
        print("ack", oldest, flush=True)
        spool.ack(oldest)
    seq += 1
    spool.save_state({"next_seq": seq})
"""


def intact(data: bytes) -> bool:
    return hashlib.sha256(data[32:]).digest() == data[:32]


def read_some(fd: int, out: bytearray, timeout: float) -> bool:
    """Append what the child wrote within ``timeout``; False at end of file."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    chunk = os.read(fd, 65536)
    out += chunk
    return bool(chunk)


def run_and_kill(directory: Path, rng: random.Random) -> tuple[int, list[int], list[int]]:
    """One writer life: its first seq, the seqs whose put() returned, and the seqs it began to ack.

    The writer runs freely for a while, then is killed a few milliseconds after it announces a put, so that
    most kills land inside put(): in the write, the fsync or the rename.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, cwd=REPO, env=env
    )
    out = bytearray()
    try:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        alive = True
        until = time.monotonic() + rng.uniform(0.05, 0.3)
        while alive and time.monotonic() < until:
            alive = read_some(fd, out, 0.05)
        mark = len(out)
        while alive and b"begin" not in out[mark:]:
            alive = read_some(fd, out, 1.0)
        time.sleep(rng.uniform(0, 0.0015))
        child.send_signal(signal.SIGKILL)
        while read_some(fd, out, 1.0):
            pass
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the writer must die by the kill, not by an error"
    lines = [line.split() for line in out.decode().splitlines() if line[-1:].isdigit()]
    assert lines, f"writer did not start: {out[:200]!r}"
    assert lines[0][0] == "ready", f"writer did not start: {out[:200]!r}"
    return (
        int(lines[0][1]),
        [int(s) for w, s in lines if w == "put"],
        [int(s) for w, s in lines if w == "ack"],
    )


@pytest.mark.timeout(30)
def test_every_returned_put_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random()
    put: list[int] = []
    acked: set[int] = set()
    for _ in range(15):
        first, returned, began_ack = run_and_kill(tmp_path, rng)
        assert first > max(put, default=0), "a seq was handed out twice across a restart"
        put += returned
        acked.update(began_ack)
    assert len(put) > 20, "the writer should have stored plenty between kills"

    with Spool(tmp_path, 1 << 30) as spool:
        held = spool.peek(limit=100_000)
        held_seqs = [e.seq for e in held]
        assert held_seqs == sorted(held_seqs)
        missing = sorted(set(put) - acked - set(held_seqs))
        assert not missing, f"records whose put() returned are gone: {missing}"
        bad = [e.seq for e in held if not intact(e.data)]
        assert not bad, f"records damaged: {bad}"
        assert spool.counters()["dropped_records"] == 0, "a kill must never leave a torn record file"
        assert not list(tmp_path.glob("*.tmp"))


def entry(seq: int, key_seq: int, size: int) -> SpoolEntry:
    body = random.Random(seq).randbytes(size)
    return SpoolEntry(seq, key_seq, seq == key_seq, hashlib.sha256(body).digest() + body)


def test_full_disk_evicts_old_groups_instead_of_failing(tiny_disk: Path) -> None:
    with Spool(tiny_disk, max_bytes=1 << 30) as spool:  # the cap is far away: only the disk can fill
        for seq in range(1, 61):
            spool.put(entry(seq, seq - (seq - 1) % 3, 60_000))  # groups of 3, 180 kB each
        held = spool.peek(limit=100)
        assert spool.evicted_groups > 0
        assert spool.evicted_records == 3 * spool.evicted_groups
        assert [e.seq for e in held] == list(range(61 - len(held), 61)), "the newest records are kept"
        assert held[0].is_key, "only whole groups are evicted"
        assert spool.needs_key()
    with Spool(tiny_disk, max_bytes=1 << 30) as spool:
        assert [e.seq for e in spool.peek(limit=100)] == [e.seq for e in held]
        assert all(intact(e.data) for e in spool.peek(limit=100))


def test_full_disk_with_only_the_open_group_refuses_then_recovers(tiny_disk: Path) -> None:
    with Spool(tiny_disk, max_bytes=1 << 30) as spool:
        spool.put(entry(1, 1, 400_000))
        spool.put(entry(2, 1, 400_000))
        with pytest.raises(SpoolError, match="disk full"):
            spool.put(entry(3, 1, 400_000))
        assert [e.seq for e in spool.peek()] == [1, 2], "the open group stays deliverable"
        assert spool.needs_key()
        assert not list(tiny_disk.glob("*.tmp")), "the failed write left its temp file behind"
        with pytest.raises(SpoolError, match="refused"):
            spool.put(entry(4, 1, 1000))
        spool.put(entry(5, 5, 400_000))  # a key: the old group may go now
        assert [e.seq for e in spool.peek()] == [5]
        assert not spool.needs_key()
        with pytest.raises(SpoolError, match="disk full"):
            spool.put(entry(6, 6, 2_000_000))  # bigger than the disk: everything else goes, in vain
        assert len(spool) == 0
        spool.save_state({"next_seq": 7})
        spool.put(entry(7, 7, 1000))
        assert [e.seq for e in spool.peek()] == [7]
