"""``pulse nats``: the NATS JetStream store, and a hub fed from it.

This module owns the ``nats`` command group (specs/nats.md):

* ``pulse nats serve`` -- the hub (``pulse serve``) with a NATS feed: every
  run published to NATS reaches its subscribers as if its producer were
  connected.
* ``pulse nats setup`` -- create the stream and the bucket (or, with
  ``--update``, apply the configured limits to the stream) and print them.

The connection comes from ``--url``/``--token``/... , then the
``[tool.pulse.nats]`` table, then ``$PULSE_NATS_URL``, ``$PULSE_NATS_TOKEN``,
``$PULSE_NATS_USER``, ``$PULSE_NATS_PASSWORD``, ``$PULSE_NATS_CREDS``. Server
URLs are shown with their userinfo hidden; secrets are never printed.
Runs in NATS are listed, shown and watched by ``pulse ls/show/watch
--source nats`` (:mod:`pulse_transports.cli._natsread`).

Exit codes: 0 ok; 1 NATS unreachable or refusing the credentials; 2 usage.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import click

from pulse_transports.cli._common import EXIT_FAILED, main, resolve_config
from pulse_transports.cli._source import nats_errors, nats_module, nats_options, nats_source
from pulse_transports.cli.ls import fail, print_json
from pulse_transports.cli.serve import listen_options, rate_option


@main.group("nats")
def nats_group() -> None:
    """NATS JetStream: create the stream and bucket, run a hub fed from NATS.

    Runs in NATS are read with `pulse ls/show/watch --source nats`.

    \b
    Examples:
      pulse ls --source nats --url nats://127.0.0.1:4222
      pulse nats serve --tcp 127.0.0.1:7433
      PULSE_NATS_TOKEN=s3cret pulse nats setup --url nats://nats.internal:4222
    """


# -- serve -------------------------------------------------------------------------------


@nats_group.command("serve")
@listen_options
@click.option("--allow-remote", is_flag=True, default=None, help="Permit a non-loopback --tcp.")
@click.option(
    "--hub-token",
    default=None,
    envvar="PULSE_HUB_TOKEN",
    help="Shared secret the hub's TCP clients must send [default with --tcp: "
    "<home>/hub.token, made at start; env PULSE_HUB_TOKEN, preferred: argv shows in ps].",
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
    NATS refusing the credentials exits 1 with the reason before listening.

    \b
    Examples:
      pulse nats serve --url nats://127.0.0.1:4222
      pulse nats serve --tcp 127.0.0.1:7433
    """
    from pulse_transports.cli._limits import raise_open_files
    from pulse_transports.cli.serve import (
        _table,
        _warn_argv_token,
        given_settings,
        hub_settings,
    )
    from pulse_transports.hub import HubAddressInUse, run_hub
    from pulse_transports.wire import Address

    source = nats_source(home, connection)
    module = nats_module()
    config = resolve_config(home)
    table = _table(config.transport_options)
    given = given_settings(socket_path, tcp, hub_token, allow_remote, rate)
    _warn_argv_token("hub_token")
    settings = hub_settings(config.home, table, given)
    raise_open_files(settings.max_connections + 64)
    feed = module.NatsFeed(source.options, source.store)

    async def check_credentials() -> None:
        # Before saying "listening": a server that refuses the credentials
        # refuses them at every retry, so the feed would wait for ever. An
        # unreachable server is another matter: it may come up; the feed retries.
        async with source.session():
            pass

    try:
        asyncio.run(check_credentials())
    except module.NatsAuthError as exc:
        fail(str(exc), EXIT_FAILED)
    except module.NatsError as exc:
        click.echo(f"pulse nats serve: {exc}; the hub starts and keeps trying", err=True)

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
    module = nats_module()
    source = nats_source(home, connection)

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
