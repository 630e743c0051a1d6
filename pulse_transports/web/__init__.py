"""The web view of a hub: a JSON API, a server-sent-events stream and one page.

This package owns ``pulse serve --http``: :class:`WebServer` runs the ASGI
app (:mod:`.app`) with uvicorn in the hub's event loop, on the hub's bus.
It needs the optional extra ``pulse-v2[web]`` (Starlette and uvicorn); the
page (``static/``) is plain HTML, JS and CSS, shipped in the wheel. Nothing
here may be imported by :mod:`pulse_core`, nor by the rest of
:mod:`pulse_transports` except the ``serve`` command (lazily).
"""

from __future__ import annotations

from pulse_transports.web.app import WebApp, WebSettings
from pulse_transports.web.cursor import Cursor, format_cursor, parse_cursor
from pulse_transports.web.openapi import openapi
from pulse_transports.web.server import WebServer, http_url

__all__ = [
    "Cursor",
    "WebApp",
    "WebServer",
    "WebSettings",
    "format_cursor",
    "http_url",
    "openapi",
    "parse_cursor",
]
