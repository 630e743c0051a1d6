"""``pulse bridge``: turn a legacy v1 ``training_status.json`` into v2 runs.

This module owns the ``bridge`` command, a thin shell around
:class:`pulse_transports.v1.V1FileSource`: it polls the v1 file,
writes each v1 run as a v2 run (``v1-<time>-<n>``) into the home's logs, and
prints one line per run started and ended on stderr. It stops on Ctrl-C or
SIGTERM (exit 0); an unfinished run then shows as ``lost`` until a bridge
continues it.

Exit codes: 0 ok; 2 usage (a bad option or transport); 3 with ``--once``
when the v1 file does not exist; 1 when another bridge already bridges the
same file.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from pulse_core.events import TERMINAL_STATUSES, ErrorReported, Event, RunMeta, StatusChanged
from pulse_transports.cli._common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    home_option,
    main,
    resolve_config,
)
from pulse_transports.cli.ls import fail


@main.command("bridge")
@click.option(
    "--v1-path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The v1 snapshot file to watch [default: <home>/training_status.json].",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=0.25,
    show_default=True,
    help="Seconds between two reads of the v1 file.",
)
@click.option(
    "--transport",
    "transports",
    multiple=True,
    metavar="NAME",
    help="Also send the bridged events to this transport (repeatable; e.g. socket).",
)
@click.option(
    "--heal/--no-heal",
    default=True,
    show_default=True,
    help="Rewrite the v1 file when it shows a v2 run whose writer is gone.",
)
@click.option("--once", is_flag=True, help="Read the v1 file once, bridge it, and exit.")
@home_option
def bridge_command(
    v1_path: Path | None,
    interval: float,
    transports: tuple[str, ...],
    heal: bool,
    once: bool,
    home: Path | None,
) -> None:
    """Bridge a v1 training_status.json into v2 runs (ls, show, watch, History).

    Each run the v1 file shows becomes a v2 run named v1-<time>-<n>, with
    status changes, progress and loss as v2 events. A new run starts after
    done/error/cancelled, or when the epoch goes back to 0 or 1; a run that
    stops without an end shows as lost. Half-written or invalid snapshots are
    skipped. Snapshots written by v2 runs are recognised and not bridged.

    \b
    Examples:
      pulse bridge
      pulse bridge --v1-path /srv/app/training_status.json --interval 0.5
      pulse bridge --once --home /data/pulse
    """
    from pulse_core.errors import PulseError
    from pulse_transports.v1 import V1FileSource

    config = resolve_config(home)
    path = v1_path.resolve() if v1_path is not None else None
    try:
        source = V1FileSource.from_transports(
            home=config.home, transports=transports, path=path, interval=interval, heal=heal
        )
    except PulseError as exc:
        raise click.UsageError(str(exc)) from None
    if once and not source.path.exists():
        fail(f"no v1 snapshot at {source.path}", EXIT_NOT_FOUND)
    click.echo(f"pulse bridge: {source.path} -> {config.home}", err=True)
    stop = threading.Event()

    def halt(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, halt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            try:
                events = source.poll()
            except PulseError as exc:
                fail(str(exc), EXIT_FAILED)
            for event in events:
                _announce(event)
            if once:
                break
            stop.wait(interval)
    finally:
        source.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _announce(event: Event) -> None:
    """One stderr line for a run that starts, ends, or ends unseen."""
    tid = event.training_id
    if isinstance(event, RunMeta):
        click.echo(f"pulse bridge: run {tid} started", err=True)
    elif isinstance(event, StatusChanged) and event.status in TERMINAL_STATUSES:
        click.echo(f"pulse bridge: run {tid} ended {event.status}", err=True)
    elif isinstance(event, ErrorReported) and event.error_code == "PROCESS_LOST":
        click.echo(f"pulse bridge: run {tid} lost ({event.message})", err=True)
