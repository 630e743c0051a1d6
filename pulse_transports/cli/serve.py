"""``pulse serve``: run the hub that pushes live training events to UIs.

This module owns the command's options and how they combine with
configuration. The hub is the other end of the ``socket`` transport, so it
reads that transport's table: ``path`` and ``token`` of
``[tool.pulse.socket]`` (shared with the sinks, so both ends agree), and its
own settings from the ``[tool.pulse.socket.hub]`` sub-table (``[socket.hub]``
in pulse.toml). A command-line option or its environment variable wins over
the tables, the tables over the defaults. It raises the process's open-file
limit so the hub can hold its ``--max-connections``.

``--http [HOST:]PORT`` adds the web view (:mod:`pulse_transports.web`, the
optional extra ``pulse-v2[web]``) to the same event loop and bus: loopback
by default; another address needs ``--allow-remote`` and the token, which
every HTTP request must then show as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import click

from pulse_core.errors import ConfigError
from pulse_transports.cli._common import EXIT_FAILED, home_option, main, resolve_config
from pulse_transports.config import check_table
from pulse_transports.hub import Hub, HubAddressInUse, HubSettings
from pulse_transports.wire import Address, default_socket_path, is_loopback, parse_hostport

#: Keys of the ``[tool.pulse.socket.hub]`` table and their types.
HUB_KEYS: Final[Mapping[str, type]] = {
    "tcp": str,
    "token": str,
    "allow_remote": bool,
    "rate": float,
    "max_frame": int,
    "handshake_timeout": float,
    "subscriber_buffer": int,
    "subscriber_limit": int,
    "max_connections": int,
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


def _raise_open_files(wanted: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards *wanted* (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


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
    help="Permit a non-loopback --tcp or --http address (requires --token).",
)
@click.option(
    "--token",
    default=None,
    envvar="PULSE_HUB_TOKEN",
    help="Shared secret TCP clients send in their hello and HTTP clients as a Bearer "
    "token [env PULSE_HUB_TOKEN].",
)
@rate_option
@click.option(
    "--max-frame",
    type=click.IntRange(min=1024),
    default=None,
    help="Longest accepted line in bytes, newline included [default: 1048576].",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds a new connection has to send its hello [default: 10].",
)
@click.option(
    "--subscriber-buffer",
    type=click.IntRange(min=1),
    default=None,
    help="Waiting items per subscriber above which progress coalesces [default: 1000].",
)
@click.option(
    "--subscriber-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Waiting items per subscriber above which it is dropped with resync [default: 10000].",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Connections beyond this are refused [default: 10000].",
)
def serve(
    home: Path | None,
    socket_path: Path | None,
    tcp: str | None,
    http: str | None,
    allow_remote: bool | None,
    token: str | None,
    rate: float | None,
    max_frame: int | None,
    handshake_timeout: float | None,
    subscriber_buffer: int | None,
    subscriber_limit: int | None,
    max_connections: int | None,
) -> None:
    """Run the hub: producers push run events, UIs subscribe to them live.

    Listens on a Unix socket (mode 0600) and optionally on TCP. Speaks
    newline-delimited JSON (specs/hub-protocol.md). Prints one line naming
    its addresses once it accepts connections; stops on SIGTERM or Ctrl-C.

    \b
    Examples:
      pulse serve
      pulse serve --tcp 127.0.0.1:7433
      pulse serve --http 7434
      PULSE_HUB_TOKEN=s3cret pulse serve --tcp 0.0.0.0:7433 --allow-remote
    """
    config = resolve_config(home)
    table = _table(config.transport_options)
    given = hub_flags(
        socket_path,
        tcp,
        token,
        allow_remote,
        rate,
        max_frame=max_frame,
        handshake_timeout=handshake_timeout,
        subscriber_buffer=subscriber_buffer,
        subscriber_limit=subscriber_limit,
        max_connections=max_connections,
    )
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
    settings = hub_settings(config.home, table, given)
    if http_address is not None:
        _check_http(http_address[0], settings)
        try:
            import pulse_transports.web  # noqa: F401 - only to fail early without the extra
        except ImportError as exc:
            raise click.UsageError(
                f"--http needs the web extra: pip install 'pulse-v2[web]' ({exc})"
            ) from None
    _raise_open_files(settings.max_connections + 64)

    def ready(addresses: list[Address], url: str | None) -> None:
        words = [str(a) for a in addresses] + ([url] if url else [])
        click.echo("pulse hub listening on " + " ".join(words))
        sys.stdout.flush()

    async def serve(stop: asyncio.Event) -> None:
        await _run(settings, http_address, config.stale_after, config.lost_after, stop, ready)

    try:
        asyncio.run(until_signalled(serve))
    except HubAddressInUse as exc:
        click.echo(f"pulse serve: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        click.echo(f"pulse serve: cannot listen: {exc}", err=True)
        sys.exit(EXIT_FAILED)


async def until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run *serve* with an event that SIGTERM and SIGINT set (a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(stop)


def hub_flags(
    socket_path: Path | None,
    tcp: str | None,
    token: str | None,
    allow_remote: bool | None,
    rate: float | None,
    **more: Any,
) -> dict[str, Any]:
    """The hub settings a command's flags give (None: not given, the table's holds)."""
    return {
        "socket": str(socket_path) if socket_path is not None else None,
        "tcp": tcp,
        "token": token,
        "allow_remote": True if allow_remote else None,
        "rate": rate,
        **more,
    }


def hub_settings(home: Path, table: Mapping[str, Any], given: Mapping[str, Any]) -> HubSettings:
    """Hub settings from the configuration table and the flags given (flags win).

    Raises:
        click.BadParameter: for a bad ``--tcp`` address.
        click.UsageError: for settings the hub refuses.
    """
    merged = {**table, **{k: v for k, v in given.items() if v is not None}}
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


def _check_http(host: str, settings: HubSettings) -> None:
    """Refuse a non-loopback HTTP address without --allow-remote and a token."""
    if is_loopback(host):
        return
    if not settings.allow_remote:
        raise click.UsageError(
            f"refusing to serve HTTP on non-loopback address {host!r}: "
            "pass --allow-remote (and a token) to accept other machines"
        )
    if not settings.token:
        raise click.UsageError(
            "a non-loopback --http address needs a shared token: --token or $PULSE_HUB_TOKEN"
        )


async def _run(
    settings: HubSettings,
    http: tuple[str, int] | None,
    stale_after: float,
    lost_after: float,
    stop: asyncio.Event,
    ready: Callable[[list[Address], str | None], None],
) -> None:
    """Run the hub (and its web view, if asked) until *stop* is set."""
    hub = Hub(attrs.evolve(settings, stale_after=stale_after, lost_after=lost_after))
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
                max_connections=settings.max_connections,
            )
            url = await web.start()
        ready(addresses, url)
        await stop.wait()
    finally:
        if web is not None:
            await web.stop()
        await hub.close()
