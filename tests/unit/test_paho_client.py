"""agent.transport.client.PahoClient: paho's log sent to ours, without the error paho logs after our disconnect."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.transport.client import NOT_CONNECTED, PahoClient


def test_not_connected_is_an_error_until_our_own_disconnect(caplog: pytest.LogCaptureFixture) -> None:
    """paho's loop on a client without a socket logs NOT_CONNECTED as an error: a real one before the owner
    disconnects (logged, and passed to on_error), the network thread's last lap after it (dropped)."""
    errors: list[str] = []
    client = PahoClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.log_to(logging.getLogger("tests.paho"), on_error=errors.append)
    with caplog.at_level(logging.DEBUG, logger="tests.paho"):
        assert client.loop(0) == MQTTErrorCode.MQTT_ERR_NO_CONN
        client.disconnect()
        assert client.loop(0) == MQTTErrorCode.MQTT_ERR_NO_CONN
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tests.paho"]
    not_connected = [level for level, line in logged if line.startswith(NOT_CONNECTED)]
    assert not_connected == [logging.ERROR], logged  # the first loop's, not the second's
    assert len(errors) == 1
    assert errors[0].startswith(NOT_CONNECTED)
    del client  # paho's __del__ closes the socket pair loop() made
