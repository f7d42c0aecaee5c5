"""The edge agent end to end against a real Mosquitto: exactness, outages, kill -9, spool cap, ACL denial.

Each test runs the real CLI (``python -m agent run``) as a subprocess and records what reaches the broker
with a persistent-session subscriber. Figures are printed (``pytest -s`` or ``-rA`` shows them).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.files import iter_images
from agent.spool import Spool
from tests.fixtures.broker import ACL_USERS, BrokerFactory, MqttBroker
from tests.integration.agent_harness import AgentProcess, Recorder, write_config

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("CCTV_OUTAGE_S", "60"))
SIMULATED = """kind = "simulated"
[capture.simulated]
width = 320
height = 240
fps = 10
noise = 1.0
"""


def _file_capture(path: Path) -> str:
    return f'kind = "file"\npath = "{path}"'


def _next_seq(spool: Path) -> int:
    """The agent's next seq, read without opening the spool (which locks it)."""
    return int(json.loads((spool / "state.json").read_text())["next_seq"])


def _spooled_seqs(spool: Path) -> set[int]:
    """Seqs stored in the spool, from the file names (the agent may delete one while we look)."""
    return {int(path.stem) for path in spool.glob("*.rec")}


def test_every_captured_frame_arrives_bit_exact(
    mqtt_broker: MqttBroker, pets_cut: Path, tmp_path: Path
) -> None:
    recorder = Recorder(mqtt_broker.port).start()
    config = write_config(
        tmp_path / "agent.toml",
        port=mqtt_broker.port,
        spool=tmp_path / "spool",
        capture=_file_capture(pets_cut),
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        assert agent.wait(120) == 0, agent.text()[-3000:]
    finally:
        agent.close()
    originals = list(iter_images(pets_cut))  # what the agent's file source read
    seqs = recorder.wait_for(lambda s: len(s) >= len(originals), 20)
    recorder.stop()
    assert seqs == set(range(len(originals))), "every frame, each once"
    decoded = recorder.decode_all()
    for seq, original in enumerate(originals):
        assert np.array_equal(decoded[seq], original), f"frame {seq} differs"
    raw = sum(f.nbytes for f in originals)
    wire = sum(len(r.payload) for r in recorder.records.values())
    print(f"\n{len(originals)} frames bit-exact over MQTT, ratio {raw / wire:.2f}")
    assert recorder.status[-1] == b"offline"
    assert not list((tmp_path / "spool").glob("*.rec")), "the spool is empty once everything is acknowledged"


def test_a_folder_replay_with_fps_is_paced_to_it(mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    """capture.fps paces a replay as a camera would film it: frame k is read no sooner than k/fps after the
    first, so the six stills span 5/8 s (unpaced they are read and coded within milliseconds of each other).
    One gap may be shorter than 1/8 s: the schedule keeps the rate, so a frame read late (a loaded machine)
    is followed by one read on time."""
    folder = tmp_path / "stills"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    recorder = Recorder(mqtt_broker.port).start()
    config = write_config(
        tmp_path / "agent.toml",
        port=mqtt_broker.port,
        spool=tmp_path / "spool",
        capture=f'kind = "folder"\npath = "{folder}"\nfps = 8.0',
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        assert agent.wait(60) == 0, agent.text()[-3000:]
    finally:
        agent.close()
    seqs = recorder.wait_for(lambda s: len(s) >= 6, 20)
    recorder.stop()
    assert seqs == set(range(6))
    times = [recorder.records[seq].header.capture_time_ns for seq in range(6)]
    span_s = (times[-1] - times[0]) / 1e9
    # 5/8 s, less what reading the first still took beyond reading the last (its stamp is taken once the
    # image is read, the schedule starts before: 6 ms more on a loaded CI run); half a frame is ample for that,
    # and unpaced the six are stamped within a few ms.
    assert span_s >= 0.625 - 0.0625, np.diff(times) / 1e9


def test_sigterm_ends_the_wait_for_a_slow_camera_s_next_frame(
    mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    """The signals thread interrupts the source: a camera filming every 10 s does not hold up a stop for 10 s."""
    capture = SIMULATED.replace("fps = 10", "fps = 0.1")
    config = write_config(
        tmp_path / "agent.toml", port=mqtt_broker.port, spool=tmp_path / "spool", capture=capture
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        agent.wait_for_log("starting at seq", 30)
        time.sleep(2.0)  # frame 0 is taken at once; the loop now waits for frame 1, due 10 s after it
        start = time.monotonic()
        assert agent.terminate(30) == 0
        stopped_s = time.monotonic() - start
    finally:
        agent.close()
    assert "received SIGTERM: stopping" in agent.text()
    assert "final: frames=1 " in agent.text()
    assert stopped_s < 5.0, f"the stop waited {stopped_s:.1f} s for the camera's next frame"


def test_a_clean_stop_logs_no_error(mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    """SIGTERM is how systemd stops the agent: an error in the journal at every stop would hide real ones. paho's
    network thread logged "Client is not connected" as an error after the publisher's own disconnect on
    nearly every stop (agent.transport.client.PahoClient.log_to)."""
    config = write_config(
        tmp_path / "agent.toml", port=mqtt_broker.port, spool=tmp_path / "spool", capture=SIMULATED
    )
    for run in range(3):
        agent = AgentProcess(config, tmp_path / f"agent-{run}.log").start()
        try:
            agent.wait_for_log("connected to", 30)
            time.sleep(1.0)
            assert agent.terminate(30) == 0
        finally:
            agent.close()
        text = agent.text()
        assert "received SIGTERM: stopping" in text
        assert "final: frames=" in text
        errors = [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]
        assert not errors, errors


def test_broker_down_mid_stream_loses_nothing(mqtt_broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker = mqtt_broker_factory(persistence=True)
    recorder = Recorder(broker.port).start()
    config = write_config(
        tmp_path / "agent.toml", port=broker.port, spool=tmp_path / "spool", capture=SIMULATED
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        recorder.wait_for(lambda s: len(s) >= 20, 30)
        broker.stop()
        time.sleep(OUTAGE_S)
        spooled_during_outage = len(_spooled_seqs(tmp_path / "spool"))
        broker.start()
        time.sleep(3)
        assert agent.terminate() == 0
    finally:
        agent.close()
    expected = _next_seq(tmp_path / "spool")
    seqs = recorder.wait_for(lambda s: len(s) >= expected, 30)
    recorder.stop()
    first_arrival: list[int] = list(dict.fromkeys(recorder.arrivals))
    print(
        f"\noutage {OUTAGE_S:.0f} s: {spooled_during_outage} records waited in the spool; {len(seqs)} delivered"
    )
    assert spooled_during_outage >= OUTAGE_S * 5, (
        "frames kept being captured into the spool during the outage"
    )
    assert seqs == set(range(expected)), f"missing: {sorted(set(range(expected)) - seqs)[:20]}"
    assert first_arrival == sorted(first_arrival), "records arrive in capture order"
    recorder.decode_all()  # every frame reconstructs and matches its hash


def test_kill_9_mid_publish_loses_nothing(mqtt_broker: MqttBroker, pets_cut: Path, tmp_path: Path) -> None:
    recorder = Recorder(mqtt_broker.port).start()
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "agent.toml",
        port=mqtt_broker.port,
        spool=spool,
        capture=SIMULATED,
        mqtt_extra="max_inflight = 2",
    )
    rng = random.Random(7)
    must_arrive: set[int] = set()
    for _round in range(3):
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        agent.wait_for_log("starting at seq", 30)
        time.sleep(rng.uniform(1.0, 2.0))
        mqtt_broker.freeze()  # acknowledgements stop: records pile up in flight and in the spool
        time.sleep(rng.uniform(0.5, 1.5))
        agent.kill()
        mqtt_broker.thaw()
        must_arrive |= _spooled_seqs(spool)  # durably stored but not acknowledged when the agent died
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        time.sleep(2)
        assert agent.terminate() == 0
    finally:
        agent.close()
    produced = _next_seq(spool)
    seqs = recorder.wait_for(lambda s: must_arrive <= s and len(s) >= produced - 3, 30)
    recorder.stop()
    print(
        f"\n3 × kill -9: {produced} seqs used, {len(seqs)} delivered, {len(must_arrive)} were in the spool at a kill"
    )
    assert len(must_arrive) >= 3, "the kills happened with records in flight"
    assert must_arrive <= seqs, f"spooled records lost: {sorted(must_arrive - seqs)}"
    # A kill between reserving a seq and storing its record leaves at most one gap per kill, never a reuse.
    assert len(set(range(produced)) - seqs) <= 3
    assert not _spooled_seqs(spool)
    recorder.decode_all()


def test_spool_cap_evicts_whole_groups(mqtt_broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker = mqtt_broker_factory()
    broker.stop()  # the agent starts with the broker unreachable
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "agent.toml",
        port=broker.port,
        spool=spool,
        capture=SIMULATED,
        codec="max_key_interval_frames = 5",
        spool_max_bytes=1_000_000,
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        time.sleep(6)
        assert agent.terminate() == 0
    finally:
        agent.close()
    with Spool(spool, 1_000_000) as held:
        entries = held.peek(10_000)
        totals = held.totals()
        produced = held.load_state()["next_seq"]
    keys = {e.seq for e in entries if e.is_key}
    assert all(e.key_seq in keys for e in entries), "no member is kept without its key"
    assert totals["evicted_groups"] >= 1
    assert totals["evicted_records"] + len(entries) + totals["refused_records"] == produced
    broker.start()
    recorder = Recorder(broker.port).start()
    agent = AgentProcess(config, tmp_path / "agent2.log").start()
    try:
        recorder.wait_for(lambda s: {e.seq for e in entries} <= s, 30)
        assert agent.terminate() == 0
    finally:
        agent.close()
    recorder.stop()
    first_run = {s for s in recorder.seqs() if s < produced}
    print(
        f"\ncap 1 MB: {produced} frames, {totals['evicted_groups']} groups "
        f"({totals['evicted_records']} records) evicted"
    )
    assert first_run == {e.seq for e in entries}
    assert len(set(range(produced)) - first_run) == totals["evicted_records"] + totals["refused_records"]
    recorder.decode_all()  # no orphan: every delivered member decodes from delivered records


def test_acl_denial_is_logged_and_nothing_is_lost(mqtt_broker_acl: MqttBroker, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "agent.toml",
        port=mqtt_broker_acl.port,
        spool=spool,
        capture=SIMULATED,
        camera="cam2",  # cam1's credentials may not write under cam2
        mqtt_extra=f'username = "cam1"\npassword = "{ACL_USERS["cam1"]}"',
    )
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        agent.wait_for_log("Not authorized", 30)
        time.sleep(1)
        assert agent.terminate() == 0
    finally:
        agent.close()
    held = _spooled_seqs(spool)
    produced = _next_seq(spool)
    assert "stays in the spool" in agent.text()
    assert held == set(range(produced)), "every refused record is still in the spool"
