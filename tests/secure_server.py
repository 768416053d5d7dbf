"""A live server with the options ``dlapp server`` gives uvicorn (TLS, proxy headers), over the
LocalExecutor in a thread; and certificates made for a test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from dlapp import tls
from dlapp.config import ServerSettings
from dlapp.executor import LocalExecutor
from dlapp.scheduler import Resources
from dlapp.server.app import create_app
from dlapp.server.run import uvicorn_options


@dataclass(frozen=True)
class Live:
    url: str
    app: FastAPI


@contextmanager
def live_server(settings: ServerSettings) -> Iterator[Live]:
    """``settings`` served by uvicorn on a free loopback port, as ``dlapp server`` serves them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    app = create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 2)))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield Live(settings.url, app)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def certificates(where: Path) -> tls.EmbeddedTls:
    """A CA of the test's own and a server certificate it signed, for 127.0.0.1 and localhost."""
    return tls.ensure_embedded(where)
