"""The agent runtime's pure parts."""

from __future__ import annotations

import time

from agent.runtime.agent import first_seq


def test_first_seq_follows_the_spool_history_and_otherwise_the_clock() -> None:
    assert first_seq({"next_seq": 10}, None) == 10
    assert first_seq({"next_seq": 10}, 14) == 15
    assert first_seq({}, 7) == 8
    now_us = time.time_ns() // 1000
    assert now_us <= first_seq({}, None) <= now_us + 5_000_000
