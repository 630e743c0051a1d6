"""The web view's ASGI application: JSON API, the ``/events`` stream, the page.

This module owns the HTTP surface of ``pulse serve --http`` (described in
:mod:`pulse_transports.web.openapi`, served at ``/openapi.json``):

* ``GET /api/runs`` -- the runs the hub holds live and the newest ones on
  disk, as ``pulse ls --json`` rows, newest first;
* ``GET /api/runs/{id}`` (v2 view), ``/history`` (Flow History record),
  ``/v1`` (v1 snapshot), ``/metrics`` (downsampled metric history) -- the
  :mod:`pulse_core.projections` of one run, from the hub's memory when it
  holds the run, else from its log;
* ``GET /api/flows`` (flow runs, newest first, with their steps' outcomes)
  and ``/api/flows/{flow_run_id}`` (its TRAIN steps, every attempt as a
  Flow History record) -- the Flows History page's data
  (:mod:`pulse_transports.web.flowruns`);
* ``GET /events`` -- server-sent events (:mod:`pulse_transports.web.stream`);
* ``GET /favicon.ico`` -- the page's icon;
* ``GET /`` and ``/static/*`` -- the page (plain HTML, JS and CSS shipped in
  this package; no build step).

Safety: every response carries a strict Content-Security-Policy (scripts
and styles from this origin only). With a token, every request must show it:
``Authorization: Bearer``, or the HttpOnly, SameSite=Strict cookie
``pulse_token_<port>`` that ``/?token=`` sets; ``?token=`` itself is taken
only on ``/`` and ``/events``, where a browser cannot send a header. Without
one -- loopback only -- the ``Host`` header must name a loopback host, so a
web page elsewhere cannot reach the API by DNS rebinding. Blocking reads
(logs, the index, lock files) run in worker threads, at most
a few at a time, and the ``/api/runs`` list is computed at most once a
second (:mod:`pulse_transports.web.recent`): a flood of requests waits its
turn instead of crowding the hub (its producers come first). Must not be
imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import math
import time
from collections.abc import Callable, Collection
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import attrs
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pulse_core._log import get_logger
from pulse_core.errors import InvalidTrainingId, RunNotFound
from pulse_core.events import validate_training_id
from pulse_core.liveness import LOST_AFTER, STALE_AFTER, Liveness
from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
from pulse_core.state import RunState
from pulse_transports.history import HomeNotFound, load_run, recover
from pulse_transports.hub import liveness_now
from pulse_transports.inprocess import Bus, EncodedEvents
from pulse_transports.retention import removed_records
from pulse_transports.web import flowruns
from pulse_transports.web.cursor import parse_cursor
from pulse_transports.web.monitor import LivenessMonitor
from pulse_transports.web.openapi import openapi
from pulse_transports.web.recent import Pacing, RecentRuns
from pulse_transports.web.stream import EventStream, cut
from pulse_transports.wire import MIN_RATE

log = get_logger("pulse.web")

STATIC: Final = Path(__file__).parent / "static"
#: The cookie the page's token is kept in after ``/?token=`` (``pulse_token_<port>``).
TOKEN_COOKIE: Final = "pulse_token"  # noqa: S105 - a cookie name, not a secret
#: The only addresses that take ``?token=`` (a browser cannot send a header there).
QUERY_TOKEN_PATHS: Final = frozenset({"/", "/events"})
#: Host names a loopback-only server answers to (the DNS-rebinding guard).
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
#: Most rows ``/api/runs`` returns.
MAX_LIMIT: Final = 1000
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@attrs.frozen
class WebSettings:
    """How the web view serves.

    Attributes:
        home: the PULSE home (logs, lock files, the index).
        token: the shared secret every request must show (None: none asked).
        loopback_only: the server listens on loopback only; without a token
            the ``Host`` header must then name a loopback host.
        stale_after, lost_after: liveness thresholds, seconds.
        liveness_tick: seconds between two liveness checks.
        keepalive: seconds of silence on ``/events`` before a comment line.
        retry_ms: the reconnect delay ``/events`` asks of browsers.
    """

    home: Path
    token: str | None = None
    loopback_only: bool = True
    stale_after: float = STALE_AFTER
    lost_after: float = LOST_AFTER
    liveness_tick: float = 1.0
    keepalive: float = 15.0
    retry_ms: int = 1000


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class _Json(JSONResponse):
    """JSON via orjson: fast, and numbers written exactly as the log has them."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class WebApp:
    """The ASGI application of the web view, bound to a hub's bus.

    Call :meth:`start` in the event loop before serving and :meth:`close`
    when the hub stops (it ends every ``/events`` stream).

    Args:
        bus: the hub's bus (live runs and subscriptions).
        settings: home, token and timings.
    """

    def __init__(self, bus: Bus, settings: WebSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.monitor = LivenessMonitor(
            bus,
            settings.home,
            stale_after=settings.stale_after,
            lost_after=settings.lost_after,
            tick=settings.liveness_tick,
        )
        self.encoded = EncodedEvents()
        self.connections: Collection[Any] = ()  # uvicorn's, set by WebServer (see cut)
        self.streams: set[EventStream] = set()
        self.closing = False
        self.pacing = p = Pacing()
        s = settings
        self.recent = RecentRuns(bus, s.home, s.stale_after, s.lost_after, self._liveness, p)
        self.starlette = Starlette(
            routes=[
                Route("/", self.index, methods=["GET"]),
                Route("/openapi.json", self.openapi, methods=["GET"]),
                Route("/api/runs", self.runs, methods=["GET"]),
                Route("/api/runs/{training_id}", self.view, methods=["GET"]),
                Route("/api/runs/{training_id}/history", self.history, methods=["GET"]),
                Route("/api/runs/{training_id}/v1", self.v1, methods=["GET"]),
                Route("/api/runs/{training_id}/metrics", self.metrics, methods=["GET"]),
                Route("/api/flows", self.flows, methods=["GET"]),
                Route("/api/flows/{flow_run_id:path}", self.flow, methods=["GET"]),
                Route("/favicon.ico", self.favicon, methods=["GET"]),
                Route("/events", self.events, methods=["GET"]),
                Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            ],
            exception_handlers={ApiError: self._api_error, 404: self._not_found},
        )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the liveness checks (call in the serving event loop)."""
        await self.monitor.refresh()
        self.monitor.start()

    async def close(self) -> None:
        """End every ``/events`` stream and stop the liveness checks."""
        self.closing = True  # a stream asked for from now on is refused
        for stream in list(self.streams):
            stream.close()
        await self.monitor.stop()

    # -- ASGI: the guard around the routes ------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        refusal = self._refusal(scope)
        app: ASGIApp = refusal if refusal is not None else self.starlette
        if scope["path"] == "/events":
            await app(scope, receive, send_secured)  # a long stream: never holds a turn
            return
        async with self.pacing.turns:  # a flood waits here, not ahead of the hub's producers
            await app(scope, receive, send_secured)

    def _refusal(self, scope: Scope) -> Response | None:
        """The answer to a request that may not go on (bad host, no token), or None."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        token = self.settings.token
        if token is None:
            if self.settings.loopback_only and _hostname(headers.get("host", "")) not in (
                LOOPBACK_HOSTS
            ):
                return _error(403, "forbidden_host", "this hub answers to loopback host names only")
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = [headers.get("authorization", "").removeprefix("Bearer ").strip()]
        if scope["path"] in QUERY_TOKEN_PATHS:
            # Only where a browser cannot send a header: the first load of the
            # page, and EventSource. Elsewhere a token in the address would
            # land in logs and histories for nothing.
            given += query.get("token", [])
        cookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookie.load(headers.get("cookie", ""))
        given += [m.value for name, m in cookie.items() if name.startswith(TOKEN_COOKIE)]
        if not any(g and hmac.compare_digest(g.encode(), token.encode()) for g in given):
            return _error(
                401,
                "unauthorized",
                "this hub needs its token: open the URL `pulse serve` printed (/?token=...), "
                "or send `Authorization: Bearer` with the token of <home>/hub.token",
            )
        if scope["path"] == "/" and "token" in query:
            # Keep the token out of the address bar and history: a cookie carries it.
            response = Response(status_code=303, headers={"location": "/"})
            # Named by port: browsers share cookies between ports of one host.
            port = (scope.get("server") or ("", 0))[1]
            response.set_cookie(
                f"{TOKEN_COOKIE}_{port}",
                token,
                httponly=True,
                samesite="strict",
                path="/",
                max_age=86400 * 30,
            )
            return response
        return None

    # -- pages ---------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        """The page."""
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def favicon(self, request: Request) -> Response:
        """The page's icon (browsers ask for it on every load)."""
        return FileResponse(
            STATIC / "favicon.ico",
            media_type="image/x-icon",
            headers={"cache-control": "max-age=86400"},
        )

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI description of this API."""
        return _Json(openapi())

    # -- the JSON API ---------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        """Live and recent runs, newest first."""
        limit = _int_param(request, "limit", default=100, lo=1, hi=MAX_LIMIT)
        return Response(await self.recent.body(limit), media_type="application/json")

    def _liveness(self, tid: str, state: RunState, now: float) -> Liveness:
        # Checked now, not taken from the monitor's last tick: a lock check is
        # cheap, and a writer killed since that tick is lost at once here.
        s = self.settings
        return liveness_now(
            s.home, tid, state, now=now, stale_after=s.stale_after, lost_after=s.lost_after
        )

    def _run(self, training_id: str) -> tuple[RunState, Liveness, float]:
        """A run's state and liveness: the hub's memory first, else its log (blocking)."""
        try:
            validate_training_id(training_id)
        except InvalidTrainingId as exc:
            raise ApiError(400, "bad_training_id", str(exc)) from None
        now = time.time()
        state = self.bus.states().get(training_id)
        if state is not None:
            return state, self._liveness(training_id, state, now), now
        s = self.settings
        try:
            record = load_run(
                s.home, training_id, now=now, stale_after=s.stale_after, lost_after=s.lost_after
            )
        except (RunNotFound, HomeNotFound):
            raise ApiError(404, "not_found", f"no run {training_id!r}") from None
        return record.state, record.liveness, now

    async def _projection(
        self, request: Request, project: Callable[[RunState, Liveness, float], Any]
    ) -> Response:
        tid = request.path_params["training_id"]
        state, live, now = await self.pacing.blocking(self._run, tid)
        return _Json(project(state, live, now))

    async def view(self, request: Request) -> Response:
        """One run's v2 view."""
        return await self._projection(
            request, lambda state, live, now: to_view(state, now=now, liveness=live)
        )

    async def history(self, request: Request) -> Response:
        """One run's Flow History record."""
        return await self._projection(
            request, lambda state, live, now: to_history_record(state, liveness=live, now=now)
        )

    async def v1(self, request: Request) -> Response:
        """One run's v1 snapshot."""
        return await self._projection(request, lambda state, live, _now: to_v1(state, live))

    async def metrics(self, request: Request) -> Response:
        """One run's downsampled metric history (optionally some metrics only)."""
        wanted = {n for n in request.query_params.get("names", "").split(",") if n}

        def project(state: RunState, _live: Liveness, _now: float) -> dict[str, Any]:
            series = to_metric_history(state)
            if wanted:
                series = {name: s for name, s in series.items() if name in wanted}
            return {"training_id": state.training_id, "metrics": series}

        return await self._projection(request, project)

    # -- Flows History ---------------------------------------------------------------

    async def flows(self, request: Request) -> Response:
        """Flow runs, newest first, each with its steps' outcomes."""
        limit = _int_param(request, "limit", default=50, lo=1, hi=MAX_LIMIT)
        records = await self.pacing.blocking(self._flow_records)
        runs = flowruns.flow_runs(records)[:limit]
        return _Json({"flow_runs": [flowruns.summary(r) for r in runs], "time": time.time()})

    async def flow(self, request: Request) -> Response:
        """One flow run: its TRAIN steps, each with every attempt's history record."""
        frid = request.path_params["flow_run_id"]
        records = await self.pacing.blocking(self._flow_records)
        mine = [r for r in records if r.get("flow_run_id") == frid]
        if not mine:
            raise ApiError(404, "not_found", f"no flow run {frid!r}")
        return _Json({**flowruns.flow_run(frid, mine), "time": time.time()})

    def _flow_records(self) -> list[dict[str, Any]]:
        """The Flow History record of every run linked to a flow run (blocking).

        The records of :meth:`pulse_transports.flows.FlowTrainer.records`
        (without the server's log path), plus each run's name and liveness;
        runs the hub holds live are taken from its memory.
        """
        s = self.settings
        now = time.time()
        states: dict[str, tuple[RunState, Liveness]] = {}
        try:
            found = recover(s.home, now=now, stale_after=s.stale_after, lost_after=s.lost_after)
        except HomeNotFound:
            found = []
        for run in found:
            states[run.training_id] = (run.state, run.liveness)
        for tid, state in self.bus.states().items():
            states[tid] = (state, self._liveness(tid, state, now))
        out = []
        for state, live in states.values():
            meta = state.meta
            if meta is None or not meta.flow_run_id:
                continue
            record = to_history_record(state, liveness=live, now=now)
            record["name"] = meta.name
            record["liveness"] = live
            record["created_at"] = state.created_at
            out.append(record)
        out += [r for r in removed_records(s.home) if r.get("flow_run_id")]  # gone: retention
        return out

    # -- the stream ------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """The server-sent-events stream of updates (see :mod:`.stream`)."""
        if self.closing:
            raise ApiError(503, "hub_closing", "the hub is shutting down; reconnect shortly")
        scope = request.query_params.get("run") or None
        if scope is not None:
            try:
                validate_training_id(scope)
            except InvalidTrainingId as exc:
                raise ApiError(400, "bad_training_id", str(exc)) from None
        interval = self.bus.interval
        rate_text = request.query_params.get("rate")
        if rate_text is not None:
            try:
                rate = float(rate_text)
            except ValueError:
                rate = math.nan
            if not (rate > 0 and math.isfinite(rate)):
                raise ApiError(
                    400, "bad_rate", f"rate must be a positive number, got {rate_text!r}"
                )
            # A client may ask for fewer updates than the hub's rate, never more,
            # and never fewer than MIN_RATE (a status must not wait for ever).
            interval = max(interval, 1.0 / max(rate, MIN_RATE))
        cursor = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        stream = EventStream(
            bus=self.bus,
            monitor=self.monitor,
            home=self.settings.home,
            encoded=self.encoded,
            scope=scope,
            interval=interval,
            resume=parse_cursor(cursor),
            retry_ms=self.settings.retry_ms,
            keepalive=self.settings.keepalive,
            abort=functools.partial(cut, self.connections, request.scope.get("client")),
            peer=f"{request.client.host}:{request.client.port}" if request.client else "?",
        )
        self.streams.add(stream)

        async def body() -> Any:
            try:
                async for chunk in stream.body():
                    yield chunk
            finally:
                self.streams.discard(stream)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    # -- errors ----------------------------------------------------------------------

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.code, exc.message)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, "not_found", f"nothing at {request.url.path}")


def _hostname(host: str) -> str:
    """The host name of a ``Host`` header (port and IPv6 brackets removed)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _int_param(request: Request, name: str, *, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"{name} must be an integer, got {text!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"bad_{name}", f"{name} must be {lo}-{hi}, got {value}")
    return value
