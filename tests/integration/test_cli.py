"""The real CLI as a subprocess: encode/decode/bench, check-config, help, the demo, and systemd notifications."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.files import iter_images
from agent.cli.codec_commands import BENCH_KEYS
from agent.codec.cctv_file import Damage, scan_records
from agent.codec.wire import Kind
from tests.fixtures.broker import Certs, MqttBroker
from tests.integration.agent_harness import REPO, write_collector_config, write_config

COMMANDS = ["encode", "decode", "bench", "run", "check-config", "collect", "archive", "simulate", "demo"]


def cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def test_help_lists_and_explains_every_command() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        sub = cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert len(sub.stdout) > 200, f"'{command} --help' should teach, not just list flags"


def test_encode_then_decode_gives_back_every_frame(pets_cut: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.cctv"
    encoded = cli("encode", str(pets_cut), "--out", str(out), "--frames", "40")
    assert encoded.returncode == 0, encoded.stderr
    assert "40 frames" in encoded.stdout
    decoded = cli("decode", str(out), "--out", str(tmp_path / "png"))
    assert decoded.returncode == 0, decoded.stderr
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:08d}.png" for i in range(40)]
    captured = iter_images(pets_cut)  # the frames the CLI read (ffmpeg's decode where it is installed)
    for png in pngs:
        assert np.array_equal(cv2.imread(str(png)), next(captured)), png.name


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_bench_and_encode_take_the_video_decoder(pets_cut: Path, tmp_path: Path) -> None:
    """Both decoders give frames the codec keeps bit for bit, and nearly the same ratio when the frames are coded
    (PETS's MS-MPEG-4 is decoded a level apart here and there by OpenCV's FFmpeg and Debian's); the ffmpeg
    child's pictures, coded by default, code smaller (measured on these 10 frames: 10.45 against 7.85)."""
    ratios = {}
    for decoder, *more in (("opencv",), ("ffmpeg", "--no-yuv"), ("ffmpeg",)):
        result = cli("bench", str(pets_cut), "--frames", "10", "--json", "--decoder", decoder, *more)
        assert result.returncode == 0, result.stderr
        figures = json.loads(result.stdout)
        assert figures["bit_exact"] is True
        ratios[" ".join((decoder, *more))] = figures["ratio"]
    assert ratios["ffmpeg --no-yuv"] == pytest.approx(ratios["opencv"], rel=0.01)
    assert ratios["ffmpeg"] > 1.25 * ratios["opencv"], ratios
    wrong = cli("encode", str(pets_cut), "--out", str(tmp_path / "x.cctv"), "--decoder", "gstreamer")
    assert wrong.returncode == 2
    assert "invalid choice: 'gstreamer'" in wrong.stderr


def test_decode_reports_a_corrupt_file_clearly(pets_cut: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.cctv"
    assert cli("encode", str(pets_cut), "--out", str(out), "--frames", "3").returncode == 0
    data = bytearray(out.read_bytes())
    data[200] ^= 0xFF
    out.write_bytes(bytes(data))
    result = cli("decode", str(out), "--out", str(tmp_path / "png"))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr
    assert "Traceback" not in result.stderr


def test_decode_of_an_empty_or_missing_file_says_so_and_makes_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.cctv").touch()
    cases = (("empty.cctv", "empty.cctv: empty file, no records"), ("gone.cctv", "gone.cctv: No such file"))
    for name, message in cases:
        result = cli("decode", str(tmp_path / name), "--out", str(tmp_path / "png"))
        assert result.returncode == 1
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "png").exists()


def test_decode_of_several_cameras_writes_a_folder_for_each(pets_cut: Path, tmp_path: Path) -> None:
    """Two cameras' files, their records interleaved (each camera's seqs start at 0): each camera is decoded
    on its own, into OUT/<camera>/, bit for bit."""
    records = {}
    for camera, frames in (("gate", 12), ("yard.2", 9)):
        out = tmp_path / f"{camera}.cctv"
        encoded = cli(
            "encode", str(pets_cut), "--out", str(out), "--frames", str(frames), "--camera-id", camera
        )
        assert encoded.returncode == 0, encoded.stderr
        data = out.read_bytes()
        starts = [item[0] for item in scan_records(data) if not isinstance(item, Damage)]
        records[camera] = [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]
    both = tmp_path / "both.cctv"
    gate, yard = records["gate"], records["yard.2"]
    both.write_bytes(b"".join(gate[i // 2] if i % 2 == 0 else yard[i // 2] for i in range(2 * len(yard))))
    with both.open("ab") as f:
        f.write(b"".join(gate[len(yard) :]))

    result = cli("decode", str(both), "--out", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert "21 frames decoded, every frame hash verified" in result.stdout
    assert "2 cameras, a folder each" in result.stdout
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["gate", "yard.2"]
    for camera, frames in (("gate", 12), ("yard.2", 9)):
        folder = tmp_path / "png" / camera
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:08d}.png" for i in range(frames)]
        for seq, image in enumerate(iter_images(pets_cut, limit=frames)):
            assert np.array_equal(cv2.imread(str(folder / f"{seq:08d}.png")), image), (camera, seq)


def test_decode_skips_only_what_a_damaged_record_costs(pets_cut: Path, tmp_path: Path) -> None:
    """A flipped bit in a member costs the rest of its key group, a smashed length field only the bytes it
    hides; every other frame is written bit for bit, each loss is logged at its byte offset, and the exit
    status says the file was damaged. ``--strict`` stops at the first damage instead."""
    out = tmp_path / "clip.cctv"
    encoded = cli("encode", str(pets_cut), "--out", str(out), "--frames", "40", "--max-key-interval", "10")
    assert encoded.returncode == 0, encoded.stderr
    data = bytearray(out.read_bytes())
    offsets = {}
    for item in scan_records(bytes(data)):
        assert not isinstance(item, Damage)
        offsets[item[1].header.seq] = (item[0], item[1])
    assert [seq for seq, (_, r) in offsets.items() if r.header.kind is Kind.KEY] == [0, 10, 20, 30]
    flipped = offsets[15][0]
    data[offsets[16][0] - 10] ^= 0x10  # near the end of seq 15's payload
    smashed = offsets[33][0]
    data[smashed + 16 : smashed + 20] = b"\xff\xff\xff\x7f"  # seq 33's payload_length
    out.write_bytes(bytes(data))

    result = cli("decode", str(out), "--out", str(tmp_path / "png"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"bytes {flipped}..{offsets[16][0] - 1} hold no valid record" in result.stderr
    assert "checksum mismatch" in result.stderr
    assert f"the record at byte {offsets[16][0]} (seq 16)" in result.stderr
    assert f"bytes {smashed}..{offsets[34][0] - 1} hold no valid record" in result.stderr
    assert "record too big" in result.stderr
    lost = {15, 16, 17, 18, 19, 33, 34, 35, 36, 37, 38, 39}
    assert "NOT decoded: 2 damaged stretches" in result.stdout
    assert f"{40 - len(lost)} frames decoded and verified" in result.stdout
    assert f"{len(lost) - 2} frames whose reference was lost" in result.stdout
    written = {int(p.stem) for p in (tmp_path / "png").glob("*.png")}
    assert written == set(range(40)) - lost
    for seq, image in enumerate(iter_images(pets_cut, limit=40)):
        if seq in written:
            assert np.array_equal(cv2.imread(str(tmp_path / "png" / f"{seq:08d}.png")), image), seq

    strict = cli("decode", "--strict", str(out), "--out", str(tmp_path / "strict"))
    assert strict.returncode == 1
    assert f"bytes {flipped}..{offsets[16][0] - 1} hold no valid record" in strict.stderr
    assert {int(p.stem) for p in (tmp_path / "strict").glob("*.png")} == set(range(15))


def test_a_full_disk_or_a_folder_as_out_stops_encode_and_decode_clearly_leaving_no_torn_file(
    pets_cut: Path, tmp_path: Path, tiny_disk: Path
) -> None:
    """ENOSPC from a real (1 MiB) filesystem: the message names the file and the cause, and what is left on
    the disk is whole: no half-written .cctv (or .part), no PNG cut short."""
    encoded = cli("encode", str(pets_cut), "--out", str(tiny_disk / "clip.cctv"), "--frames", "30")
    assert encoded.returncode == 1
    assert f"{tiny_disk / 'clip.cctv'}: No space left on device" in encoded.stderr
    assert "Traceback" not in encoded.stderr
    assert list(tiny_disk.iterdir()) == []

    out = tmp_path / "clip.cctv"
    assert cli("encode", str(pets_cut), "--out", str(out), "--frames", "30").returncode == 0
    (tmp_path / "folder").mkdir()
    into_a_folder = cli("encode", str(pets_cut), "--out", str(tmp_path / "folder"), "--frames", "2")
    assert into_a_folder.returncode == 1
    assert (
        f"{tmp_path / 'folder'}: is a directory; --out names the .cctv file to write" in into_a_folder.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.cctv", "folder"]
    decoded = cli("decode", str(out), "--out", str(tiny_disk / "png"))
    assert decoded.returncode == 1
    assert "Traceback" not in decoded.stderr
    failed = re.search(r"/png/(\d{8})\.png: No space left on device", decoded.stderr)
    assert failed is not None, decoded.stderr
    # Writer threads (one a core but one) fill the disk in no set order: whatever is left must be whole.
    written = {int(p.stem) for p in (tiny_disk / "png").iterdir()}
    assert int(failed.group(1)) not in written
    assert len(written) < 30
    for seq, frame in enumerate(iter_images(pets_cut, limit=30)):
        if seq in written:
            assert np.array_equal(cv2.imread(str(tiny_disk / "png" / f"{seq:08d}.png")), frame), seq


def test_log_level_on_the_command_line_wins_over_the_config_file(tmp_path: Path) -> None:
    """The agent run on a video that is not there stops at once; its INFO lines show only when asked for."""
    config = write_config(
        tmp_path / "agent.toml",
        port=1,
        spool=tmp_path / "spool",
        capture=f'kind = "file"\npath = "{tmp_path / "gone.avi"}"',
        extra_agent='log_level = "ERROR"',
    )
    quiet = cli("run", "--config", str(config))
    assert quiet.returncode == 1
    assert "gone.avi: no such file" in quiet.stderr
    assert " INFO " not in quiet.stderr
    run = ["run", "--config", str(config)]
    for argv in (["--log-level", "INFO", *run], [*run, "--log-level", "INFO"]):
        loud = cli(*argv)
        assert loud.returncode == 1
        assert " INFO agent.runtime.agent: camera lab/cam1: starting" in loud.stderr, argv


def test_bench_json_has_exactly_the_documented_keys(pets_cut: Path) -> None:
    result = cli("bench", str(pets_cut), "--frames", "20", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert tuple(figures) == BENCH_KEYS
    assert figures["frames"] == 20
    assert figures["bit_exact"] is True
    assert figures["max_abs_error"] == 0
    assert figures["ratio"] > 5
    tolerant = json.loads(cli("bench", str(pets_cut), "--frames", "20", "--json", "--tolerance", "2").stdout)
    assert 0 < tolerant["max_abs_error"] <= 2
    with_zstd = json.loads(
        cli("bench", str(pets_cut), "--frames", "20", "--json", "--entropy", "zstd").stdout
    )
    assert with_zstd["bit_exact"] is True
    assert with_zstd["encoded_bytes"] > figures["encoded_bytes"] * 1.1, "CTX (the default) is the smaller"


def test_bench_threads_change_the_time_not_the_bytes(pets_cut: Path) -> None:
    """The pets frames as OpenCV decodes them are three 768x576 planes, coded and decoded at once with
    --threads 3, one by one with --threads 1: the same records either way."""
    figures = []
    for threads in ("1", "3"):
        result = cli(
            "bench", str(pets_cut), "--frames", "12", "--json", "--decoder", "opencv", "--threads", threads
        )
        assert result.returncode == 0, result.stderr
        figures.append(json.loads(result.stdout))
    assert figures[0]["encoded_bytes"] == figures[1]["encoded_bytes"]
    assert figures[0]["keys"] == figures[1]["keys"]
    assert figures[0]["bit_exact"] is figures[1]["bit_exact"] is True
    refused = cli("bench", str(pets_cut), "--threads", "0")
    assert refused.returncode == 2
    assert "--threads" in refused.stderr


def test_check_config_exit_codes_and_messages(tmp_path: Path) -> None:
    assert cli("check-config", str(REPO / "config.toml")).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[agent]\ncamera_id = "cam1"\n[capture]\nkind = "rtsp"\n[mqtt]\nhots = "x"\n[codec]\nthreshold = "0.5"\n'
    )
    result = cli("check-config", str(bad))
    assert result.returncode == 1
    assert "mqtt.hots: unknown key" in result.stderr
    assert "did you mean 'host'" in result.stderr
    assert "codec.threshold" in result.stderr
    assert "capture.url" in result.stderr
    collector = cli("check-config", "--collector", str(REPO / "docs" / "collector.example.toml"))
    assert collector.returncode == 0, collector.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_job_and_reports(tmp_path: Path) -> None:
    result = cli(
        "demo",
        "--duration",
        "4",
        "--width",
        "320",
        "--height",
        "240",
        "--workdir",
        str(tmp_path),
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hashes match capture   yes, every frame bit for bit" in result.stdout
    assert "archive verify         OK" in result.stdout
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_agent_speaks_the_systemd_notify_protocol(mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(0.5)
    config = write_config(
        tmp_path / "agent.toml",
        port=mqtt_broker.port,
        spool=tmp_path / "spool",
        capture='kind = "simulated"\n[capture.simulated]\nwidth = 160\nheight = 120\nfps = 10',
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "10000000"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=REPO, env=env
    )
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 5:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
        agent.terminate()
        assert agent.wait(30) == 0
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text
    assert text.index("READY=1") < text.index("WATCHDOG=1")
    assert "STATUS=capturing from simulated" in text
    assert "STOPPING=1" in text


def test_collector_speaks_the_systemd_notify_protocol_even_when_idle(
    mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(0.5)
    config = write_collector_config(
        tmp_path / "collector.toml", port=mqtt_broker.port, root=tmp_path / "archive"
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(address)}
    collector = subprocess.Popen(
        [sys.executable, "-m", "agent", "collect", "--config", str(config)], cwd=REPO, env=env
    )
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 3:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
        collector.terminate()
        assert collector.wait(30) == 0
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(sock.recv(4096).decode())
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait(5)
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text
    assert text.count("WATCHDOG=1") >= 3, "the watchdog is fed while no frame arrives"
    assert "STOPPING=1" in text


def test_a_record_published_when_the_collector_says_ready_is_archived(
    mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    """READY=1 means subscribed: a unit ordered after the collector loses nothing to a session not made yet.

    Before, READY=1 came before the connection: a first record published then was dropped by the broker
    (QoS 1 messages are kept only for sessions it knows), and every member after it could not be decoded.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.integration.test_collector import SITE, archived, make_records

    key = make_records("cam-ready", 1)[0]
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ready-test", protocol=mqtt.MQTTv5)
    publisher.connect(mqtt_broker.host, mqtt_broker.port)
    publisher.loop_start()  # connected before the collector starts: it publishes the moment READY=1 comes
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(0.2)
    root = tmp_path / "archive"
    config = write_collector_config(tmp_path / "collector.toml", port=mqtt_broker.port, root=root)
    env = {**os.environ, "NOTIFY_SOCKET": str(address)}
    collector = subprocess.Popen(
        [sys.executable, "-m", "agent", "collect", "--config", str(config)], cwd=REPO, env=env
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                if "READY=1" in sock.recv(4096).decode():
                    break
        else:
            raise AssertionError("no READY=1 within 30 s")
        publisher.publish(f"cctv/{SITE}/cam-ready/frame", key, qos=1).wait_for_publish(15)
        deadline = time.monotonic() + 15
        while not archived(root, "cam-ready") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(archived(root, "cam-ready").values()) == [key]
        collector.terminate()
        assert collector.wait(30) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait(5)
        sock.close()
        publisher.disconnect()
        publisher.loop_stop()


def test_simulate_writes_the_deterministic_scene(tmp_path: Path) -> None:
    from agent.simulate.scene import Scene, SceneSettings

    args = ["--out", str(tmp_path), "--frames", "3", "--width", "160", "--height", "120", "--seed", "4"]
    result = cli("simulate", *args)
    assert result.returncode == 0, result.stderr
    scene = Scene(SceneSettings(seed=4, width=160, height=120))
    for index in range(3):
        assert np.array_equal(cv2.imread(str(tmp_path / f"{index:08d}.png")), scene.frame(index))


def test_a_fresh_spool_starts_its_seqs_at_the_clock(mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    """A reinstalled camera must never reuse a seq the archive already holds for it."""
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "agent.toml",
        port=mqtt_broker.port,
        spool=spool,
        capture='kind = "simulated"\n[capture.simulated]\nwidth = 64\nheight = 48\nfps = 10',
        seqs_from_zero=False,
    )
    before_us = time.time_ns() // 1000
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    agent.terminate()
    _out, log = agent.communicate(timeout=30)
    assert agent.returncode == 0, log
    first = int(log.split("starting at seq=")[1].split(",")[0])
    assert before_us <= first <= time.time_ns() // 1000
    assert json.loads((spool / "state.json").read_text())["next_seq"] > first


def _command_lines_holding(text: str) -> list[str]:
    """Every process's command line on this machine that contains ``text``."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            line = path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in line:
                found.append(line)
    return found


@contextlib.contextmanager
def _simulate_serving(args: list[str], tmp_path: Path) -> Iterator[str]:
    """``cctv-agent simulate --serve ...`` running; yields the line it prints when it serves (or the server's
    stderr, when it printed nothing), and stops it at the end."""
    errors = tmp_path / "server.err"
    with (
        errors.open("wb") as err,
        subprocess.Popen(
            [sys.executable, "-m", "agent", "simulate", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as server,
    ):
        try:
            assert server.stdout is not None
            yield server.stdout.readline() or errors.read_text()
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_simulate_serves_rtsp_that_asks_for_a_password_kept_off_command_lines(tmp_path: Path) -> None:
    from agent.capture import ffmpeg
    from agent.errors import CaptureError
    from agent.simulate.serve import free_port
    from agent.urls import with_password
    from tests.fixtures.rtsp import gstreamer_missing

    if (reason := gstreamer_missing()) is not None:
        pytest.skip(reason)
    password = "Pw-7e3c9a"
    (tmp_path / "camera-password").write_text(password + "\n", encoding="utf-8")
    port = free_port()
    args = ["--serve", "rtsp", "--port", str(port), "--width", "160", "--height", "120"]
    args += ["--duration", "5", "--user", "viewer", "--password-file", str(tmp_path / "camera-password")]
    with _simulate_serving(args, tmp_path) as said:
        assert said.startswith(f"serving RTSP at rtsp://viewer:***@127.0.0.1:{port}/cam"), said
        url = with_password(f"rtsp://viewer@127.0.0.1:{port}/cam", password)
        assert ffmpeg.probe(url, ffmpeg.rtsp_options(5.0), 15).width == 160
        assert _command_lines_holding(password) == []  # neither the server nor its child show it
        with pytest.raises(CaptureError, match="401 Unauthorized"):
            ffmpeg.probe(with_password(f"rtsp://viewer@127.0.0.1:{port}/cam", "wrong"), [], 15)


@pytest.mark.parametrize(
    ("serve", "says", "scheme", "path"),
    [("rtsp", "RTSPS", "rtsps", "/cam"), ("mjpeg", "MJPEG", "https", "/stream.mjpg")],
)
def test_simulate_serves_tls_with_the_certificate_it_is_given(
    tmp_path: Path, mqtt_certs: Certs, serve: str, says: str, scheme: str, path: str
) -> None:
    """A camera behind TLS to try ``capture.ca_file`` against: the stream opens over rtsps:// or https:// for
    a client that checks the certificate against the CA that signed it."""
    from agent.capture.stream import StreamSource
    from agent.simulate.serve import free_port
    from tests.fixtures.rtsp import gstreamer_missing

    if serve == "rtsp" and (reason := gstreamer_missing()) is not None:
        pytest.skip(reason)
    port = free_port()
    args = ["--serve", serve, "--port", str(port), "--width", "160", "--height", "120", "--duration", "5"]
    args += ["--tls-cert", str(mqtt_certs.server_cert), "--tls-key", str(mqtt_certs.server_key)]
    with _simulate_serving(args, tmp_path) as said:
        url = f"{scheme}://127.0.0.1:{port}{path}"
        assert said.startswith(f"serving {says} at {url}"), said
        with StreamSource(url, open_timeout_s=10, ca_file=mqtt_certs.ca_file) as source:
            frame = source.read(timeout_s=10)
            assert frame is not None
            assert frame.image.shape == (120, 160, 3)


def test_simulate_wants_the_certificate_and_its_key_together(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("PEM\n", encoding="utf-8")
    result = cli("simulate", "--serve", "rtsp", "--tls-cert", str(tmp_path / "c.pem"))
    assert result.returncode != 0
    assert "--tls-cert and --tls-key go together" in result.stderr
