"""``pulse serve``: run the hub that pushes live training events to UIs.

This module owns the command's options and how they combine with
configuration. The hub is the other end of the ``socket`` transport, so it
reads that transport's table: ``path`` and ``token`` of
``[tool.pulse.socket]`` (shared with the sinks, so both ends agree), and its
own settings from the ``[tool.pulse.socket.hub]`` sub-table (``[socket.hub]``
in pulse.toml). A command-line option or its environment variable wins over
the tables, the tables over the defaults. It raises the process's open-file
limit so the hub can hold its ``--max-connections``, and shares what the
limit allows between the web view (``--http-max-connections``, at most a
quarter of it) and the hub socket, so a flood of one never starves the
other of descriptors. Errors the event loop reports (an ``accept`` out of
descriptors, a connection's failure) are one short rate-limited line each,
never a traceback.

``--http [HOST:]PORT`` adds the web view (:mod:`pulse_transports.web`, the
optional extra ``pulse-v2[web]``) to the same event loop and bus: loopback
by default; another address needs ``--allow-remote``.

A hub that listens on TCP or HTTP asks for a token by default
(:mod:`pulse_transports.hubtoken`): the configured one, else the one in
``<home>/hub.token``, else a new random one written there (0600); local
clients read that file. The ready line prints the page's URL with
``?token=`` once (the page then keeps it in an HttpOnly cookie).
``--no-token`` opts out (loopback only). A ``--token`` given on the command
line works but warns: other users see argv in ``ps``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

import attrs
import click

from pulse_core._log import get_logger
from pulse_core.errors import ConfigError
from pulse_transports import homemode
from pulse_transports._mailbox import one_malloc_arena
from pulse_transports.cli._common import EXIT_FAILED, home_option, main, resolve_config
from pulse_transports.cli._limits import loop_error, raise_open_files, share_descriptors
from pulse_transports.config import check_table
from pulse_transports.hub import Feed, Hub, HubAddressInUse, HubSettings, start_threads
from pulse_transports.hubtoken import hub_token
from pulse_transports.wire import Address, default_socket_path, is_loopback, parse_hostport

log = get_logger("pulse.hub")

#: Threads of the serving loop's default executor: the home feed's wait, the
#: web view's reads (two at a time), the retention pass and heap trims. Fixed,
#: so that their count does not grow with load (each keeps a stack and a
#: malloc arena); the hub's own reads have their own pool.
SERVE_THREADS: Final = 4

#: Keys of the ``[tool.pulse.socket.hub]`` table and their types.
HUB_KEYS: Final[Mapping[str, type]] = {
    "tcp": str,
    "token": str,
    "allow_remote": bool,
    "rate": float,
    "max_frame": int,
    "handshake_timeout": float,
    "line_timeout": float,
    "subscriber_buffer": int,
    "subscriber_limit": int,
    "max_connections": int,
    "keep_ended": float,
}


def _table(options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Hub settings from configuration: the socket table's path and token, its hub table."""
    sink_table = options.get("socket", {})
    table: dict[str, Any] = {}
    for key in ("path", "token"):
        if isinstance(sink_table.get(key), str):
            table["socket" if key == "path" else key] = sink_table[key]
    hub = sink_table.get("hub", {})
    if not isinstance(hub, Mapping):
        raise click.UsageError("[socket.hub] must be a table")
    try:
        table.update(check_table(hub, HUB_KEYS, what="[socket.hub]"))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return table


def parse_http(text: str) -> tuple[str, int]:
    """Split ``--http``'s ``[HOST:]PORT``; a bare port means loopback (127.0.0.1).

    Raises:
        ValueError: naming what is wrong.
    """
    text = text.strip()
    if text.isdigit():
        port = int(text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, got {port}")
        return "127.0.0.1", port
    return parse_hostport(text)


F = TypeVar("F", bound=Callable[..., Any])


def listen_options(func: F) -> F:
    """``--socket`` and ``--tcp``: where a hub listens (shared by the serve commands)."""
    func = click.option(
        "--tcp",
        metavar="HOST:PORT",
        default=None,
        envvar="PULSE_HUB_TCP",
        help="Also listen on TCP (loopback unless --allow-remote; port 0: any) "
        "[env PULSE_HUB_TCP].",
    )(func)
    return click.option(
        "--socket",
        "socket_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="PULSE_HUB_SOCKET",
        help="Unix socket to listen on (mode 0600) [default: <home>/pulse.sock; "
        "env PULSE_HUB_SOCKET].",
    )(func)


def rate_option(func: F) -> F:
    """``--rate``: the per-subscriber update limit (shared by the serve commands)."""
    return click.option(
        "--rate",
        type=click.FloatRange(min=0.01, min_open=False),
        default=None,
        help="Most updates per second per run and stream a subscriber gets [default: 10].",
    )(func)


#: ``pulse serve``'s limits: HUB_KEYS key -> (least value, help). A given value
#: goes to the hub settings under its key; the type is HUB_KEYS', the default
#: HubSettings'.
LIMITS: Final = {
    "max_frame": (1024, "Longest accepted line in bytes, newline included"),
    "handshake_timeout": (0.01, "Seconds a new connection has to send its hello"),
    "line_timeout": (0.01, "Seconds a line, once begun, has to reach its newline"),
    "subscriber_buffer": (1, "Waiting items per subscriber above which progress coalesces"),
    "subscriber_limit": (1, "Waiting items per subscriber above which it is dropped with resync"),
    "max_connections": (1, "Connections beyond this are refused"),
    "keep_ended": (0, "Seconds a run that ended (or was lost) stays in the hub's memory"),
}


def limit_options(func: F) -> F:
    """The :data:`LIMITS` options (``--max-frame``, ...), each ``default=None``."""
    defaults = attrs.fields_dict(HubSettings)
    for key, (least, what) in reversed(LIMITS.items()):
        default = defaults[key].default
        kind: click.IntRange | click.FloatRange
        if HUB_KEYS[key] is int:
            kind, shown = click.IntRange(min=int(least)), str(default)
        else:
            kind, shown = click.FloatRange(min=least), f"{default:g}"
        text = f"{what} [default: {shown}]."
        func = click.option("--" + key.replace("_", "-"), type=kind, default=None, help=text)(func)
    return func


@main.command()
@home_option
@listen_options
@click.option(
    "--http",
    metavar="[HOST:]PORT",
    default=None,
    envvar="PULSE_HUB_HTTP",
    help="Also serve the web view and its JSON/SSE API (loopback unless --allow-remote; "
    "needs pulse-v2[web]) [env PULSE_HUB_HTTP].",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    default=None,
    help="Permit a non-loopback --tcp or --http address.",
)
@click.option(
    "--token",
    default=None,
    envvar="PULSE_HUB_TOKEN",
    help="Shared secret TCP clients send in their hello and HTTP clients as a Bearer "
    "token [default: <home>/hub.token, made at start; env PULSE_HUB_TOKEN, preferred: "
    "a token on the command line is visible in ps].",
)
@click.option(
    "--no-token",
    is_flag=True,
    default=False,
    help="Ask TCP and HTTP clients for no token (loopback only: every local user can "
    "then read and write runs).",
)
@rate_option
@click.option(
    "--http-max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="HTTP connections beyond this are answered 503 (counted apart from the hub "
    "socket's; at most a quarter of the open-file limit) [default: 256].",
)
@limit_options
def serve(
    home: Path | None,
    socket_path: Path | None,
    tcp: str | None,
    http: str | None,
    allow_remote: bool | None,
    token: str | None,
    no_token: bool,
    rate: float | None,
    http_max_connections: int | None,
    **limits: Any,
) -> None:
    """Run the hub: producers push run events, UIs subscribe to them live.

    Listens on a Unix socket (mode 0600) and optionally on TCP. Speaks
    newline-delimited JSON (specs/hub-protocol.md). Prints one line naming
    its addresses once it accepts connections (the web view's with its
    token: open that URL); stops on SIGTERM or Ctrl-C. TCP and HTTP clients
    need the token of <home>/hub.token unless --no-token.

    \b
    Examples:
      pulse serve
      pulse serve --tcp 127.0.0.1:7433
      pulse serve --http 7434
      PULSE_HUB_TOKEN=s3cret pulse serve --tcp 0.0.0.0:7433 --allow-remote
    """
    config = resolve_config(home)
    table = _table(config.transport_options)
    _warn_argv_token("token")
    try:
        homemode.parse_policy(os.environ.get(homemode.ENV_MODE))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if homemode.others_can_read(config.home):
        log.warning(
            "pulse home can be entered by other users: their processes can read its runs "
            "(chmod 700 it, or 2770 for a group)",
            home=str(config.home),
        )
    given = given_settings(socket_path, tcp, token, allow_remote, rate, **limits)
    http_address = None
    if http:
        try:
            http_address = parse_http(http)
        except ValueError as exc:
            # Name the forms the help promises ([HOST:]PORT), not the parser's.
            reason = str(exc).replace("expected HOST:PORT, got", "not a port number:")
            raise click.BadParameter(
                f"{reason} (expected [HOST:]PORT, e.g. 7434 or 127.0.0.1:7434)",
                param_hint="--http",
            ) from None
    settings = hub_settings(
        config.home, table, given, listens=http_address is not None, no_token=no_token
    )
    from pulse_transports.retention import RetentionFeed, RetentionPolicy

    try:
        policy = RetentionPolicy.from_config(config)
        retention = RetentionFeed(config.home, policy, lost_after=config.lost_after)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if http_address is not None:
        _check_http(http_address[0], settings)
        try:
            import pulse_transports.web  # noqa: F401 - only to fail early without the extra
        except ImportError as exc:
            raise click.UsageError(
                f"--http needs the web extra: pip install 'pulse-v2[web]' ({exc})"
            ) from None
    http_wanted = 0
    if http_address is not None:
        from pulse_transports.web.server import MAX_HTTP_CONNECTIONS

        http_wanted = http_max_connections or MAX_HTTP_CONNECTIONS
    raise_open_files(settings.max_connections + 64)
    settings, http_cap = share_descriptors(settings, http_wanted)

    def ready(addresses: list[Address], url: str | None) -> None:
        if url and settings.token:
            url += "?" + urlencode({"token": settings.token})
        words = [str(a) for a in addresses] + ([url] if url else [])
        click.echo("pulse hub listening on " + " ".join(words))
        sys.stdout.flush()

    async def serve_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_error)
        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=SERVE_THREADS, thread_name_prefix="pulse-serve")
        )
        await start_threads(None, SERVE_THREADS)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await _run(
            settings,
            http_address,
            config.stale_after,
            config.lost_after,
            stop,
            ready,
            http_cap,
            retention,
        )

    one_malloc_arena()  # before the hub's threads: what they free, trim_heap gives back
    try:
        asyncio.run(serve_until_signalled())
    except HubAddressInUse as exc:
        click.echo(f"pulse serve: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        click.echo(f"pulse serve: cannot listen: {exc}", err=True)
        sys.exit(EXIT_FAILED)


def given_settings(
    socket_path: Path | None,
    tcp: str | None,
    token: str | None,
    allow_remote: bool | None,
    rate: float | None,
    **limits: Any,
) -> dict[str, Any]:
    """The hub settings given on a serve command's line, by key (None: not given)."""
    return {
        "socket": str(socket_path) if socket_path is not None else None,
        "tcp": tcp,
        "token": token,
        "allow_remote": True if allow_remote else None,
        "rate": rate,
        **limits,
    }


def hub_settings(
    home: Path,
    table: Mapping[str, Any],
    given: Mapping[str, Any],
    *,
    listens: bool = False,
    no_token: bool = False,
) -> HubSettings:
    """Hub settings from the configuration table and the flags given (flags win).

    A hub with a TCP listener (or *listens*: another one, e.g. HTTP) gets a
    token: the configured one, else ``<home>/hub.token``'s or a new one
    (:func:`pulse_transports.hubtoken.hub_token`), unless *no_token*.

    Raises:
        click.BadParameter: for a bad ``--tcp`` address or token.
        click.UsageError: for settings the hub refuses.
    """
    merged = {**table, **{k: v for k, v in given.items() if v is not None}}
    if merged.get("tcp") or listens:
        merged["token"] = _listener_token(home, merged.get("token"), no_token=no_token)
    tcp_address = None
    if merged.get("tcp"):
        try:
            tcp_address = parse_hostport(str(merged["tcp"]))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tcp") from None
    socket_text = merged.pop("socket", None)
    merged.pop("tcp", None)
    settings = HubSettings(
        home=home,
        socket_path=Path(socket_text) if socket_text else default_socket_path(home),
        tcp=tcp_address,
        **merged,
    )
    try:
        settings.check()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def _listener_token(home: Path, given: str | None, *, no_token: bool) -> str | None:
    """The token TCP and HTTP clients must show (None with ``--no-token``)."""
    if no_token:
        if given:
            raise click.UsageError("--no-token and a token (--token, $PULSE_HUB_TOKEN) conflict")
        return None
    try:
        return hub_token(home, given)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--token") from None
    except OSError as exc:
        raise click.UsageError(f"cannot write the hub token file: {exc}") from None


def _warn_argv_token(name: str) -> None:
    """Warn when a token came from the command line (others see argv in ``ps``)."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
        log.warning(
            "pulse hub token given on the command line: other users can read it in ps; "
            "prefer $PULSE_HUB_TOKEN or <home>/hub.token",
            option="--" + name.replace("_", "-"),
        )


def _check_http(host: str, settings: HubSettings) -> None:
    """Refuse a non-loopback HTTP address without --allow-remote and a token."""
    if is_loopback(host):
        return
    if not settings.allow_remote:
        raise click.UsageError(
            f"refusing to serve HTTP on non-loopback address {host!r}: "
            "pass --allow-remote to accept other machines"
        )
    if not settings.token:
        raise click.UsageError(
            "a non-loopback --http address needs a token: drop --no-token (or set $PULSE_HUB_TOKEN)"
        )


async def _run(
    settings: HubSettings,
    http: tuple[str, int] | None,
    stale_after: float,
    lost_after: float,
    stop: asyncio.Event,
    ready: Callable[[list[Address], str | None], None],
    http_cap: int | None = None,
    retention: Feed | None = None,
) -> None:
    """Run the hub (and its web view, if asked) until *stop* is set."""
    hub = Hub(
        attrs.evolve(settings, stale_after=stale_after, lost_after=lost_after),
        feeds=(retention,) if retention is not None else (),
    )
    web = None
    try:
        addresses = await hub.start()
        url = None
        if http is not None:
            from pulse_transports.web import WebServer, WebSettings

            web = WebServer(
                hub.bus,
                WebSettings(
                    home=settings.home,
                    token=settings.token,
                    loopback_only=is_loopback(http[0]),
                    stale_after=stale_after,
                    lost_after=lost_after,
                ),
                http[0],
                http[1],
                max_connections=http_cap,
            )
            url = await web.start()
        ready(addresses, url)
        await stop.wait()
    finally:
        if web is not None:
            await web.stop()
        await hub.close()
