"""``pulse nats``: runs read from NATS JetStream, and a hub fed from it.

This module owns the ``nats`` command group (specs/nats.md):

* ``pulse nats ls`` / ``show ID`` / ``watch [ID]`` -- ``ls``, ``show`` and
  ``watch`` against NATS instead of a home's logs, with the same options,
  output and exit codes. In the JSON, a run's ``log`` is its subject filter
  and ``source`` is ``"nats"``; ``ls --json`` names the server (redacted)
  instead of the home. Liveness comes from silence alone: NATS cannot check
  a remote writer's lock, so a run whose writer died is ``stale`` after
  ``stale_after`` and ``lost`` after ``lost_after`` seconds.
* ``pulse nats serve`` -- the hub (``pulse serve``) with a NATS feed: every
  run published to NATS reaches its subscribers as if its producer were
  connected.
* ``pulse nats setup`` -- create the stream and the bucket (or, with
  ``--update``, apply the configured limits to the stream) and print them.

The connection comes from ``--url``/``--token``/... , then the
``[tool.pulse.nats]`` table, then ``$PULSE_NATS_URL``, ``$PULSE_NATS_TOKEN``,
``$PULSE_NATS_USER``, ``$PULSE_NATS_PASSWORD``, ``$PULSE_NATS_CREDS``. Server
URLs are shown with their userinfo hidden; secrets are never printed.

Exit codes: 0 ok; 1 NATS unreachable or refusing the credentials (and, for
``watch``, a run that ends badly); 2 usage; 3 unknown run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from pulse_transports.cli._common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    home_option,
    main,
    resolve_config,
)
from pulse_transports.cli.ls import (
    STATUS_CHOICES,
    check_id,
    fail,
    print_json,
    render_table,
    select_rows,
)
from pulse_transports.cli.serve import listen_options, rate_option

if TYPE_CHECKING:
    from pulse_core.events import Event
    from pulse_core.state import RunState
    from pulse_transports.nats import NatsRunRecord, NatsSource

F = TypeVar("F", bound=Callable[..., Any])

_CONNECTION = ("url", "token", "user", "password", "creds", "tls_ca", "tls_cert", "tls_key")


def nats_options(func: F) -> F:
    """Add the connection options (and ``--home``, for the configuration)."""
    options = [
        click.option(
            "--url",
            default=None,
            metavar="URL",
            help="NATS server URL(s), comma-separated [default: [tool.pulse.nats] url, "
            "$PULSE_NATS_URL, nats://127.0.0.1:4222].",
        ),
        click.option(
            "--token", default=None, help="Authentication token [default: $PULSE_NATS_TOKEN]."
        ),
        click.option("--user", default=None, help="User name [default: $PULSE_NATS_USER]."),
        click.option("--password", default=None, help="Password [default: $PULSE_NATS_PASSWORD]."),
        click.option(
            "--creds",
            type=click.Path(dir_okay=False),
            default=None,
            help="A .creds file (JWT + NKey) [default: $PULSE_NATS_CREDS].",
        ),
        click.option("--tls-ca", type=click.Path(dir_okay=False), default=None, help="CA bundle."),
        click.option(
            "--tls-cert", type=click.Path(dir_okay=False), default=None, help="Client certificate."
        ),
        click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="Its key."),
        home_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _module() -> Any:
    """Import the NATS transport, failing with the install command if nats-py is missing."""
    try:
        import pulse_transports.nats as module
    except ImportError as exc:
        fail(f"{exc}", EXIT_FAILED)
    return module


def make_source(home: Path | None, connection: dict[str, Any]) -> NatsSource:
    """A source from configuration, the given connection options winning."""
    module = _module()
    config = resolve_config(home)
    given = {key: connection.get(key) for key in _CONNECTION}
    from pulse_core.errors import ConfigError

    try:
        source: NatsSource = module.NatsSource.from_config(config, **given)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return source


@contextlib.contextmanager
def nats_errors() -> Iterator[None]:
    """Turn NATS failures into one-line errors: 3 for an unknown run, else 1."""
    module = _module()
    try:
        yield
    except module.NatsRunNotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except module.NatsError as exc:
        fail(str(exc), EXIT_FAILED)


@main.group("nats")
def nats_group() -> None:
    """Runs in NATS JetStream: list, show, watch, and a hub fed from NATS.

    \b
    Examples:
      pulse nats ls --url nats://127.0.0.1:4222
      pulse nats show my-run --json
      pulse nats watch
      pulse nats serve --tcp 127.0.0.1:7433
      PULSE_NATS_TOKEN=s3cret pulse nats setup --url nats://nats.internal:4222
    """


@nats_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of `pulse ls`).")
@click.option(
    "--status",
    type=click.Choice(STATUS_CHOICES),
    default=None,
    help="Only runs with this status or liveness.",
)
@click.option("--flow-run-id", default=None, help="Only runs of this flow run.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N runs.")
@nats_options
def ls_command(
    as_json: bool,
    status: str | None,
    flow_run_id: str | None,
    limit: int | None,
    home: Path | None,
    **connection: Any,
) -> None:
    """List the runs in NATS, newest first (from the runs bucket and the stream).

    \b
    Examples:
      pulse nats ls
      pulse nats ls --status running --json
    """
    source = make_source(home, connection)
    with nats_errors():
        records = source.recover()
    rows = select_rows([r.summary for r in records], status, flow_run_id, limit)
    if as_json:
        print_json({"source": _source_info(source), "runs": rows})
        return
    if not rows:
        click.echo(f"no runs in NATS at {source.options.shown}")
        return
    render_table(rows, Path(source.options.shown))


def _source_info(source: NatsSource) -> dict[str, Any]:
    return {
        "kind": "nats",
        "url": source.options.shown,
        "stream": source.store.stream,
        "bucket": source.store.bucket,
    }


def nats_document(record: NatsRunRecord, source: NatsSource, now: float) -> dict[str, Any]:
    """The ``pulse nats show --json`` object: ``pulse show``'s, from NATS."""
    from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view

    state = record.state
    at = state.last_event_at if record.liveness == "lost" and state.last_event_at else now
    return {
        "training_id": record.training_id,
        "liveness": record.liveness,
        "writer_alive": None,
        "log": {
            "path": f"{source.options.shown} {record.summary['log']}",
            "bad_lines": record.bad_messages,
            "offset": record.stream_seq,
        },
        "source": {**_source_info(source), "origin": record.origin},
        "view": to_view(state, now=at, liveness=record.liveness),
        "v1": to_v1(state, liveness=record.liveness),
        "history": to_history_record(state, liveness=record.liveness, now=at),
        "metric_history": to_metric_history(state),
    }


@nats_group.command("show")
@click.argument("training_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of `pulse show`).")
@nats_options
def show_command(training_id: str, as_json: bool, home: Path | None, **connection: Any) -> None:
    """Show one run from NATS: timeline, progress, metrics, errors, flow link.

    \b
    Examples:
      pulse nats show my-run
      pulse nats show my-run --json | jq .v1
    """
    from pulse_transports.cli.show import render

    check_id(training_id)
    source = make_source(home, connection)
    with nats_errors():
        record = source.load_run(training_id)
    document = nats_document(record, source, time.time())
    if as_json:
        print_json(document)
        return
    render({**document, "now": time.time()})


# -- watch -----------------------------------------------------------------------------


class NatsWatch:
    """One run followed from NATS: what ``watch`` draws (the shape of ``RunWatch``)."""

    def __init__(self, source: NatsSource, record: NatsRunRecord) -> None:
        from pulse_core.reducer import Folder

        self.source = source
        self.training_id = record.training_id
        self.folder = Folder(record.state)
        self.stream_seq = record.stream_seq
        self.liveness: str = record.liveness
        self.stale_after = source.stale_after
        self.lost_after = source.lost_after
        self.log = record.summary["log"]

    @property
    def follower(self) -> NatsWatch:
        """What ``watch``'s screen reads the state from (``follower.state``)."""
        return self

    @property
    def state(self) -> RunState:
        """The run's state so far."""
        return self.folder.state

    def apply(self, event: Event) -> bool:
        """Fold a new event; False for one already folded."""
        if event.training_id != self.training_id or event.seq <= self.folder.last_seq:
            return False
        self.folder.apply(event)
        return True

    def check(self, now: float) -> str | None:
        """Recompute the liveness; return it if it changed."""
        liveness = self.source.liveness(self.state, now)
        changed = liveness if liveness != self.liveness else None
        self.liveness = liveness
        return changed

    def row(self, now: float) -> dict[str, Any]:
        """The run's ``ls`` row as of now."""
        from pulse_core.projections import to_summary

        row = to_summary(
            self.state,
            liveness=self.liveness,  # type: ignore[arg-type]
            now=now,
            training_id=self.training_id,
        )
        row["log"] = self.log
        row["source"] = "nats"
        return row


async def _pick(source: NatsSource, wait: float | None) -> NatsRunRecord | None:
    """The most recently active live run, waiting up to *wait* seconds for one."""
    deadline = None if wait is None else time.monotonic() + wait
    told = False
    while True:
        records = await source.arecover()
        live = [r for r in records if r.liveness in ("alive", "stale")]
        if live:
            return max(live, key=lambda r: (r.state.last_event_at or 0.0, r.training_id))
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if not told:
            click.echo(
                f"waiting for a run in NATS at {source.options.shown} (Ctrl-C to stop)", err=True
            )
            told = True
        await asyncio.sleep(1.0)


async def _watch(
    source: NatsSource, training_id: str | None, once: bool, timeout: float | None, as_json: bool
) -> int:
    from rich.console import Console

    from pulse_transports.cli.watch import _Screen
    from pulse_transports.nats import StreamReader, run_filter

    if training_id is not None:
        record = await source.aload_run(training_id)
    else:
        found = await _pick(source, wait=0 if once else timeout)
        if found is None:
            fail(
                f"no live run in NATS at {source.options.shown} (see pulse nats ls)", EXIT_NOT_FOUND
            )
        record = await source.aload_run(found.training_id)
    watch = NatsWatch(source, record)
    screen = _Screen(Console(highlight=False), cast(Any, watch), as_json)
    screen.emit("start")
    if once:
        screen.finish()
        return 0
    if watch.liveness in ("ended", "lost"):
        return screen.finish()
    deadline = None if timeout is None else time.monotonic() + timeout
    async with source.session(reconnect=True) as js:
        reader = StreamReader(
            js,
            source.store.stream,
            run_filter(watch.training_id),
            policy="by_start_sequence",
            start_seq=watch.stream_seq + 1,
        )
        await reader.open()
        try:
            with screen:
                while True:
                    wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                    delivery = await reader.next(timeout=max(wait, 0.01))
                    news = False
                    if delivery is not None and delivery.event is not None:
                        event = delivery.event
                        if watch.apply(event):
                            news = True
                            screen.event(event)
                    if watch.check(time.time()) is not None:
                        screen.emit("liveness")
                    if watch.liveness in ("ended", "lost"):
                        return screen.finish()
                    screen.tick(news)
                    if deadline is not None and time.monotonic() >= deadline:
                        return 0
        finally:
            await reader.close()


@nats_group.command("watch")
@click.argument("training_id", metavar="[ID]", required=False)
@click.option("--once", is_flag=True, help="Print the current state once and exit.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop watching after this many seconds (exit 0).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines (as `pulse watch`).")
@nats_options
def watch_command(
    training_id: str | None,
    once: bool,
    timeout: float | None,
    as_json: bool,
    home: Path | None,
    **connection: Any,
) -> None:
    """Follow a run live from NATS: progress bar with ETA, metrics, status changes, errors.

    Without ID, follows the most recently active live run, waiting for one.
    Ends when the run ends (exit 0 if done, 1 if error or cancelled) or is
    lost (exit 1); Ctrl-C exits with 0.

    \b
    Examples:
      pulse nats watch
      pulse nats watch my-run --json --timeout 60
    """
    if training_id is not None:
        check_id(training_id)
    source = make_source(home, connection)
    try:
        with nats_errors():
            code = asyncio.run(_watch(source, training_id, once, timeout, as_json))
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


# -- serve -------------------------------------------------------------------------------


@nats_group.command("serve")
@listen_options
@click.option("--allow-remote", is_flag=True, default=None, help="Permit a non-loopback --tcp.")
@click.option(
    "--hub-token",
    default=None,
    envvar="PULSE_HUB_TOKEN",
    help="Shared secret the hub's TCP clients must send [env PULSE_HUB_TOKEN].",
)
@rate_option
@nats_options
def serve_command(
    socket_path: Path | None,
    tcp: str | None,
    allow_remote: bool | None,
    hub_token: str | None,
    rate: float | None,
    home: Path | None,
    **connection: Any,
) -> None:
    """Run the hub, fed from NATS: every run published to NATS reaches its subscribers.

    The hub reads each run's current state from the stream (its kept events
    and latest values), then follows every run live; producers may still
    connect over the socket (each event is delivered once). Other hub
    settings come from [tool.pulse.socket.hub], as for `pulse serve`.

    \b
    Examples:
      pulse nats serve --url nats://127.0.0.1:4222
      pulse nats serve --tcp 127.0.0.1:7433
    """
    from pulse_transports.cli.serve import _raise_open_files, _table, hub_settings
    from pulse_transports.hub import HubAddressInUse, run_hub
    from pulse_transports.wire import Address

    source = make_source(home, connection)
    module = _module()
    config = resolve_config(home)
    table = _table(config.transport_options)
    given = {
        "socket": str(socket_path) if socket_path is not None else None,
        "tcp": tcp,
        "token": hub_token,
        "allow_remote": True if allow_remote else None,
        "rate": rate,
    }
    settings = hub_settings(config.home, table, given)
    _raise_open_files(settings.max_connections + 64)
    feed = module.NatsFeed(source.options, source.store)

    def ready(addresses: list[Address]) -> None:
        click.echo(
            "pulse hub listening on "
            + " ".join(str(a) for a in addresses)
            + f" (fed from NATS at {source.options.shown})"
        )
        sys.stdout.flush()

    async def serve_until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_hub(settings, stop, ready, feeds=[feed])

    try:
        asyncio.run(serve_until_signalled())
    except HubAddressInUse as exc:
        fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        fail(f"cannot listen: {exc}", EXIT_FAILED)


# -- setup -------------------------------------------------------------------------------


@nats_group.command("setup")
@click.option("--update", is_flag=True, help="Apply the configured limits to an existing stream.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@nats_options
def setup_command(update: bool, as_json: bool, home: Path | None, **connection: Any) -> None:
    """Create the PULSE stream and runs bucket (limits from [tool.pulse.nats]).

    Sinks create them on first use too; run this where producers may not
    manage streams, or with --update after changing a limit.

    \b
    Examples:
      pulse nats setup --url nats://127.0.0.1:4222
      pulse nats setup --update --json
    """
    module = _module()
    source = make_source(home, connection)

    async def run() -> dict[str, Any]:
        async with source.session() as js:
            done = await module.ensure_store(js, source.store, update=update)
            info = await js.stream_info(source.store.stream)
        cfg, state = info.config, info.state
        return {
            "url": source.options.shown,
            "stream": {
                "name": source.store.stream,
                "action": done["stream"],
                "subjects": cfg.subjects,
                "max_msgs_per_subject": cfg.max_msgs_per_subject,
                "max_age": cfg.max_age,
                "max_bytes": cfg.max_bytes,
                "duplicate_window": cfg.duplicate_window,
                "messages": state.messages,
                "bytes": state.bytes,
            },
            "bucket": {"name": source.store.bucket, "action": done["bucket"]},
        }

    with nats_errors():
        try:
            result = asyncio.run(run())
        except module.NatsError:
            raise
        except Exception as exc:  # noqa: BLE001 - a JetStream API refusal, named
            raise module.explain(exc, source.options) from None
    if as_json:
        print_json(result)
        return
    stream, bucket = result["stream"], result["bucket"]
    click.echo(
        f"stream {stream['name']}: {stream['action']}; bucket {bucket['name']}: {bucket['action']}"
    )
    click.echo(
        f"  subjects {', '.join(stream['subjects'] or [])}; "
        f"max_msgs_per_subject {stream['max_msgs_per_subject']}; "
        f"max_age {stream['max_age']:g} s; max_bytes {stream['max_bytes']}; "
        f"duplicate_window {stream['duplicate_window']:g} s"
    )
    click.echo(f"  holds {stream['messages']} messages, {stream['bytes']} bytes")
