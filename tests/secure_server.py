"""A live server with the options ``dlapp server`` gives uvicorn (TLS, proxy headers), over the
LocalExecutor in a thread (``inprocess.live_app``); and certificates made for a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from dlapp import tls
from dlapp.config import ServerSettings

from inprocess import live_app


@dataclass(frozen=True)
class Live:
    url: str
    app: FastAPI


@contextmanager
def live_server(settings: ServerSettings) -> Iterator[Live]:
    """``settings`` served by uvicorn on a free loopback port, as ``dlapp server`` serves them."""
    with live_app(settings) as (url, app):
        yield Live(url, app)


def certificates(where: Path) -> tls.EmbeddedTls:
    """A CA of the test's own and a server certificate it signed, for 127.0.0.1 and localhost."""
    return tls.ensure_embedded(where)
