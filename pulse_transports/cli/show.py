"""``pulse show [ID]``: one run in detail (without ID: the latest run, as ``pulse v1``).

This module owns the ``show`` command. The human view has the run's status
timeline with the time spent in each status, progress, the latest metrics
with a loss sparkline (from :func:`pulse_core.projections.to_metric_history`),
errors with code, message, retryable flag and details, anomalies, the flow
link and the log path.

``pulse show ID --json`` prints one JSON object (keys sorted)::

    {
      "training_id": str,
      "liveness": "alive|stale|lost|ended",
      "writer_alive": true | false | null,   # the lock check; null if not checked
      "log": {"path": str, "bad_lines": int, "offset": int,
              "coalesced": int,     # seq numbers skipped by normal coalescing
              "missing": int},      # seq numbers really lost (unreadable lines)
      "view": {...},            # pulse_core.projections.to_view (specs/protocol.md)
      "v1": {...},              # pulse_core.projections.to_v1, with the liveness
      "history": {...},         # pulse_core.projections.to_history_record
      "metric_history": {...}   # pulse_core.projections.to_metric_history
    }

Coalesced or missing: the emitter gives every event it builds the next seq
number, and builds progress/metrics for its fastest sink; a slower sink (the
file log: one sample a second) gets a coalesced subset, so its log skips seq
numbers in normal operation (``view.stats.missing`` counts every skipped
number). Status, error, meta and drop events reach every sink. A number is
really *missing* only if the log lost the event: that shows as an unreadable
line, so ``missing`` is at most the log's bad lines and the rest of the
skipped numbers are ``coalesced``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from pulse_transports.cli._common import EXIT_NOT_FOUND, main
from pulse_transports.cli._detail import (
    markup_escape,
    run_document,
    seq_gaps,
    show_lines,
    sparkline,
)
from pulse_transports.cli._source import file_only, open_source, source_options
from pulse_transports.cli.ls import check_id, fail, open_home, print_json, shown_run


@main.command("show")
@click.argument("training_id", metavar="[ID]", required=False)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (its shape: docs/reference/cli.md, JSON output).",
)
@source_options
def show_command(
    training_id: str | None, as_json: bool, home: Path | None, source: str, **connection: Any
) -> None:
    """Show one run: timeline, progress, metrics, errors, anomalies, flow link.

    Without ID (file source): the most recently active live run, else the
    run whose last event is the latest (the run pulse v1 and pulse watch pick).

    \b
    Examples:
      pulse show
      pulse show 20261129-013724-123-9f2c41d07b
      pulse show my-run --json | jq .view.progress
      pulse show my-run --source nats --json | jq .v1
    """
    if training_id is not None:
        check_id(training_id)
    if not file_only(source, connection):
        if training_id is None:
            raise click.UsageError(f"pulse show --source {source} needs an ID")
        if source == "nats":
            from pulse_transports.cli._natsread import show_nats

            show_nats(training_id, as_json, home, connection)
        else:
            show_other(source, training_id, as_json, home, connection)
        return
    config = open_home(home)
    record = shown_run(config, training_id, f"no runs under {config.home} (try pulse demo)")
    document = run_document(record, time.time())
    if as_json:
        print_json(document)
        return
    render({**document, "now": time.time()})


def show_other(
    name: str, training_id: str, as_json: bool, home: Path | None, connection: dict[str, Any]
) -> None:
    """``show`` from a plugin source: the same document, ``log`` being where it read."""
    from pulse_core.errors import RunNotFound
    from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view

    found = open_source(name, home, connection)
    try:
        record = found.load(training_id)
    except RunNotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    finally:
        found.close()
    now = time.time()
    state = record.state
    at = state.last_event_at if record.liveness == "lost" and state.last_event_at else now
    document = {
        "training_id": record.training_id,
        "liveness": record.liveness,
        "writer_alive": None,
        "log": {
            "path": record.where,
            "bad_lines": record.bad_lines,
            "offset": record.cursor,
            **seq_gaps(state.missing, record.bad_lines),
        },
        "source": {"kind": name},
        "view": to_view(state, now=at, liveness=record.liveness),
        "v1": to_v1(state, liveness=record.liveness),
        "history": to_history_record(state, liveness=record.liveness, now=at),
        "metric_history": to_metric_history(state),
    }
    if as_json:
        print_json(document)
        return
    render({**document, "now": now})


def render(doc: dict[str, Any]) -> None:
    """Print a ``show`` document for people (:func:`~pulse_transports.cli._detail.show_lines`).

    Everything from the log is escaped, never read as rich markup.
    """
    from rich.console import Console

    # soft_wrap: long lines are never cut or re-wrapped by rich (a terminal
    # wraps them itself; a pipe gets complete lines).
    console = Console(highlight=False, soft_wrap=True)
    for line in show_lines(doc, markup_escape):
        console.print(line)


__all__ = ["render", "run_document", "seq_gaps", "show_command", "show_other", "sparkline"]
