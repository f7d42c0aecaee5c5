"""paho's client with its TLS socket leak fixed; the only subclass of paho in the project."""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt


class PahoClient(mqtt.Client):
    """paho's client, minus one leak: paho 2.x leaves the TLS socket open when the handshake fails.

    That is one file descriptor per retry while a certificate is wrong. This does what paho's
    ``_ssl_wrap_socket`` does (the context checks the host name unless ``tls_insecure``) and closes the
    socket on failure.
    """

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
