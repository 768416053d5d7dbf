"""Run the server in the foreground: bind, announce where (``server.json``), serve.

With ``tls_cert`` / ``tls_key`` uvicorn serves https. Proxy headers (``X-Forwarded-For``,
``-Proto``) are believed from ``trusted_proxies`` only: by default from no one, so the client
address that the audit log records for a refused token is the connection's own.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from dlapp import embedded
from dlapp.config import ServerSettings, load_server_settings
from dlapp.errors import DlappError
from dlapp.server import files
from dlapp.server.app import create_app


def listen_socket(host: str, port: int) -> socket.socket:
    """The API's bound socket, Nagle's algorithm off (TCP_NODELAY) on every connection.

    With Nagle on, each answer on a kept-alive connection waited ~40 ms for the client's
    delayed ACK. asyncio turns it off only on sockets made as ``IPPROTO_TCP`` (not the default
    0), and Linux hands the listener's TCP_NODELAY to each accepted connection: both are set.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """TLS and proxy-header options of ``uvicorn.Config`` (nothing from uvicorn's environment:
    it would believe ``X-Forwarded-For`` from loopback by default)."""
    options: dict[str, Any] = {
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
    }
    if settings.tls_cert is not None:
        for what, path in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
            if path is None or not path.is_file():
                raise DlappError(f"{what}: {path} is not a readable file")
        options.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
    return options


def restart(home: Path, reason: str) -> None:
    """Start this server afresh, with the same command line, in the same process: it waits for
    the Ray head (or starts the embedded cluster anew) and requeues the apps it lost."""
    logging.getLogger(__name__).critical("%s; restarting the server", reason)
    embedded.clear_state(home, os.getpid())
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def serve(config_file: Path | None, overrides: dict[str, Any]) -> None:
    files.private_umask()  # the store, tarballs, logs, Ray's files: the server's user's alone
    settings = load_server_settings(config_file, **overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = uvicorn_options(settings)  # a missing certificate stops it before it binds
    sock = listen_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    settings.home.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **options)
    srv = uvicorn.Server(config)
    original_startup = srv.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        app.state.ctx.executor.on_cluster_lost = lambda reason: restart(settings.home, reason)
        ca_file = embedded.issuing_ca(settings.home, settings.tls_cert)
        embedded.write_state(settings.home, settings.url, os.getpid(), ca_file)

    srv.startup = startup  # type: ignore[method-assign]
    try:
        srv.run(sockets=[sock])
    finally:
        embedded.clear_state(settings.home, os.getpid())
