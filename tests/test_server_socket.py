"""The API's listening socket: every connection it accepts has Nagle's algorithm off."""

from __future__ import annotations

import socket

from dlapp.server.run import listen_socket


def test_accepted_connections_have_tcp_nodelay() -> None:
    server = listen_socket("127.0.0.1", 0)
    try:
        server.listen()
        assert server.proto == socket.IPPROTO_TCP  # what asyncio checks before setting it
        with socket.create_connection(server.getsockname()[:2]) as _client:
            conn, _ = server.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.close()
