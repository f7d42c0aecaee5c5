"""``capture.ca_file``: a camera behind TLS proves its certificate, against a real GStreamer RTSPS server that
also asks for a password, and an HTTPS MJPEG server. The servers' certificate is the test PKI's
(``mqtt_certs``): signed by its CA, for 127.0.0.1. (The ffmpeg child reading an RTSPS camera is tested with
the password tests in ``test_capture_stream.py``.)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from agent.capture.stream import StreamSource
from agent.config import parse_agent_config
from agent.errors import CaptureError
from agent.runtime.wiring import make_source
from agent.simulate.serve import ServerProcess
from tests.fixtures.broker import Certs
from tests.fixtures.rtsp import CAMERA_CREDENTIALS, ffmpeg_children

REFUSED = {"open_timeout_s": 2.0, "read_timeout_s": 1.0, "reconnect_max_s": 1.0}
"""Timeouts for a camera that is to be refused: ``open()`` waits for a frame for the sum of the first two."""


def _source_from_config(url: str, tmp_path: Path, **capture: object) -> StreamSource:
    """The source as the agent builds it from its config."""
    kind = "rtsp" if url.startswith("rtsp") else "http"
    table = {"kind": kind, "url": url, "open_timeout_s": 5, "read_timeout_s": 5, "reconnect_max_s": 1}
    config = parse_agent_config(
        {"agent": {"camera_id": "c"}, "capture": table | capture}, env={}, base_dir=tmp_path
    )
    source = make_source(config)
    assert isinstance(source, StreamSource)
    return source


def test_a_ca_file_has_the_camera_prove_its_certificate(
    rtsps_server: ServerProcess, mqtt_certs: Certs, tmp_path: Path
) -> None:
    """With the CA that signed the camera's certificate the stream opens, by OpenCV even where an ffmpeg
    child would be the ``auto`` choice (the child cannot check a certificate). The CA file is named
    relative to the config, as the TLS files of ``[mqtt]`` may be."""
    (tmp_path / "camera-ca.pem").write_bytes(mqtt_certs.ca_file.read_bytes())
    with _source_from_config(rtsps_server.url, tmp_path, ca_file="camera-ca.pem") as source:
        assert source.ca_file == tmp_path / "camera-ca.pem"
        frame = source.read(timeout_s=5)
        assert frame is not None
        assert frame.image.shape == (360, 640, 3)
        assert source.decoded_by == "opencv"
        assert not ffmpeg_children()


def test_a_camera_whose_certificate_does_not_verify_is_refused_saying_so(
    rtsps_server: ServerProcess, mqtt_certs: Certs, tmp_path: Path
) -> None:
    """Another CA's file: the same server, the right password, and no frame, with a message that names the
    certificate as a cause and does not quote the password."""
    source = _source_from_config(rtsps_server.url, tmp_path, ca_file=str(mqtt_certs.rogue_ca_file), **REFUSED)
    with pytest.raises(CaptureError, match=r"its certificate verifies against .*rogue-ca\.crt") as err:
        source.open()
    assert CAMERA_CREDENTIALS[1] not in str(err.value)
    assert "s3cret" not in str(err.value)


def test_an_https_camera_proves_its_certificate_or_is_refused(
    https_mjpeg_server: ServerProcess, mqtt_certs: Certs, tmp_path: Path
) -> None:
    """The same ``ca_file`` for an HTTPS MJPEG camera, which OpenCV decodes anyway."""
    url = https_mjpeg_server.url
    assert url.startswith("https://")
    with _source_from_config(url, tmp_path, ca_file=str(mqtt_certs.ca_file)) as source:
        frame = source.read(timeout_s=5)
        assert frame is not None
        assert frame.image.shape == (360, 640, 3)
    refused = _source_from_config(url, tmp_path, ca_file=str(mqtt_certs.rogue_ca_file), **REFUSED)
    with pytest.raises(CaptureError, match=r"its certificate verifies against .*rogue-ca\.crt"):
        refused.open()


@pytest.mark.parametrize(
    ("url", "decoder", "problem"),
    [
        ("rtsp://127.0.0.1:1/cam", "auto", "for rtsps:// and https:// cameras only"),
        ("http://127.0.0.1:1/cam", "auto", "for rtsps:// and https:// cameras only"),
        ("rtsps://127.0.0.1:1/cam", "ffmpeg", "decoder = 'ffmpeg' cannot check the camera's certificate"),
    ],
)
def test_a_ca_file_that_would_not_be_used_is_refused(url: str, decoder: str, problem: str) -> None:
    with pytest.raises(CaptureError, match=problem):
        StreamSource(url, decoder=decoder, ca_file=Path("/etc/ssl/certs/ca-certificates.crt"))


def test_opencv_without_a_ca_file_opens_the_camera_or_says_what_to_set(rtsps_server: ServerProcess) -> None:
    """Without ``ca_file`` OpenCV does what its build does: PyPI's OpenCV 4 does not check the certificate
    and opens the camera; OpenCV 5 checks it against the system's CAs, which do not sign the test PKI, and
    the message then says which key makes the camera provable."""
    if cv2.__version__.split(".")[0] == "4":
        with StreamSource(rtsps_server.url, open_timeout_s=5, read_timeout_s=5, decoder="opencv") as source:
            assert source.read(timeout_s=5) is not None
    else:
        source = StreamSource(rtsps_server.url, decoder="opencv", **REFUSED)
        with pytest.raises(CaptureError, match=r"capture\.ca_file names the camera's own certificate"):
            source.open()
