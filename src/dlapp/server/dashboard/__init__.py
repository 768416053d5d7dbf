"""The web dashboard: static HTML, CSS and vanilla JS under ``/dashboard/``.

The files hold no data and are served without a token (``auth.OPEN_PREFIXES``); the page asks
for a token, keeps it in the tab's ``sessionStorage`` and calls the ``/api/v1`` JSON API with
it, so a user sees exactly what the API lets them see. Nothing but these files may ever be
served under ``/dashboard/``. Pages (one HTML file, routed by the URL's fragment):
``#/cluster``, ``#/queues``, ``#/apps``, ``#/apps/<id>``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
PREFIX = "/dashboard"
HEADERS = {
    # scripts, styles and API calls from this origin only; no inline code, no framing
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def app_url(base_url: str, app_id: str) -> str:
    """The dashboard page of one app."""
    return f"{base_url}{PREFIX}/#/apps/{app_id}"


class _WithHeaders:
    """Add ``HEADERS`` to every answer of the wrapped ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """``GET /dashboard`` redirects to ``/dashboard/``; the files are mounted below it."""

    @app.get(PREFIX, include_in_schema=False)
    def dashboard_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")

    app.mount(PREFIX, _WithHeaders(StaticFiles(directory=STATIC, html=True)), name="dashboard")
