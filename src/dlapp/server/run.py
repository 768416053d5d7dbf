"""Run the server in the foreground: bind, announce where (``server.json``), serve."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import uvicorn

from dlapp import embedded
from dlapp.config import load_server_settings
from dlapp.server.app import create_app


def serve(config_file: Path | None, overrides: dict[str, Any]) -> None:
    settings = load_server_settings(config_file, **overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    settings.home.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    original_startup = srv.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        embedded.write_state(settings.home, settings.url, os.getpid())

    srv.startup = startup  # type: ignore[method-assign]
    try:
        srv.run(sockets=[sock])
    finally:
        embedded.clear_state(settings.home, os.getpid())
