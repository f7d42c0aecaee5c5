"""paho's client with its TLS socket leak fixed and its log sent to ours; the only subclass of paho in the project."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import LogLevel, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

NOT_CONNECTED = "Client is not connected"
"""How paho's error starts when its loop runs on a client whose socket is closed."""


class PahoClient(mqtt.Client):
    """paho's client, minus one leak and one false error.

    The leak: paho 2.x leaves the TLS socket open when the handshake fails, one file descriptor per retry
    while a certificate is wrong. This does what paho's ``_ssl_wrap_socket`` does (the context checks the host
    name unless ``tls_insecure``) and closes the socket on failure.

    The false error: see :meth:`log_to`.
    """

    _disconnected = False
    """Whether this client's owner has called ``disconnect()`` (the publisher and the collector's link do so
    only to stop: neither connects the same client again)."""

    def log_to(self, logger: logging.Logger, on_error: Callable[[str], None] | None = None) -> None:
        """Send paho's log lines to ``logger`` at their own levels, but one: after the owner's ``disconnect()``
        paho's network thread, having written the DISCONNECT and closed the socket, may run its loop once more
        before ``loop_stop()`` ends it, and logs "Client is not connected" as an error. It did so on nearly
        every SIGTERM of the agent: an ERROR in the journal for every clean stop. Before a disconnect of ours
        the same line is a real error and is logged. ``on_error``: also called with each error logged."""

        def forward(client: mqtt.Client, userdata: Any, level: int, line: str) -> None:
            if level == mqtt.MQTT_LOG_ERR:
                if self._disconnected and line.startswith(NOT_CONNECTED):
                    return
                if on_error is not None:
                    on_error(line)
            logger.log(mqtt.LOGGING_LEVEL[LogLevel(level)], "%s", line)

        self.on_log = forward

    def disconnect(
        self, reasoncode: ReasonCode | None = None, properties: Properties | None = None
    ) -> MQTTErrorCode:
        self._disconnected = True
        return super().disconnect(reasoncode, properties)

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        context = self._ssl_context
        if context is None:
            raise ValueError("TLS is on but paho holds no SSL context")
        try:
            ssl_sock = context.wrap_socket(
                tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
            )
        except BaseException:
            tcp_sock.close()
            raise
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock
