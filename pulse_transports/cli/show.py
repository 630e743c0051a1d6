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
from pulse_transports.cli._source import file_only, open_source, source_options
from pulse_transports.cli.ls import (
    LIVENESS_STYLE,
    STATUS_STYLE,
    check_id,
    fail,
    fmt_duration,
    fmt_flow,
    fmt_number,
    fmt_progress,
    fmt_time,
    heal_v1,
    open_home,
    print_json,
)

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """Draw *values* as a one-line sparkline of at most *width* characters."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width - 1)] + [values[-1]]
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(int((v - lo) / span * len(SPARK)), len(SPARK) - 1)] for v in values)


def run_document(record: Any, now: float) -> dict[str, Any]:
    """Build the ``show --json`` object of a recovered run."""
    from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view

    state = record.state
    # A lost run's clock stopped at its last event: its durations end there.
    at = state.last_event_at if record.liveness == "lost" and state.last_event_at else now
    return {
        "training_id": record.training_id,
        "liveness": record.liveness,
        "writer_alive": record.writer,
        "log": {
            "path": str(record.path),
            "bad_lines": record.bad_lines,
            "offset": record.position.offset,
            **seq_gaps(state.missing, record.bad_lines),
        },
        "view": to_view(state, now=at, liveness=record.liveness),
        "v1": to_v1(state, liveness=record.liveness),
        "history": to_history_record(state, liveness=record.liveness, now=at),
        "metric_history": to_metric_history(state),
    }


def seq_gaps(skipped: int, bad_lines: int) -> dict[str, int]:
    """Split the log's skipped seq numbers into ``coalesced`` (normal) and ``missing``.

    See the module doc: only an unreadable line can hide a lost event.
    """
    missing = max(0, min(skipped, bad_lines))
    return {"coalesced": max(0, skipped - missing), "missing": missing}


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
    from pulse_core.errors import RunNotFound
    from pulse_transports.history import load_run, recover, v1_choice

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
    if training_id is None:
        records = recover(config.home, stale_after=config.stale_after, lost_after=config.lost_after)
        heal_v1(config, records)
        record = v1_choice(records)
        if record is None:
            fail(f"no runs under {config.home} (try pulse demo)", EXIT_NOT_FOUND)
    else:
        try:
            record = load_run(
                config.home,
                training_id,
                stale_after=config.stale_after,
                lost_after=config.lost_after,
            )
        except RunNotFound as exc:
            fail(str(exc), EXIT_NOT_FOUND)
        heal_v1(config)  # the v1 slot may show this run, now lost or ended
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
    """Print a ``show`` document for people.

    Everything from the log (ids, names, messages, error codes, details,
    metric names, anomaly details) is untrusted text: it is escaped, never
    read as rich markup (gloo's errors contain ``[...]``).
    """
    from rich.console import Console
    from rich.markup import escape

    def esc(value: Any) -> str:
        return escape(str(value))

    # soft_wrap: long lines are never cut or re-wrapped by rich (a terminal
    # wraps them itself; a pipe gets complete lines).
    console = Console(highlight=False, soft_wrap=True)
    view = doc["view"]
    out = console.print
    status, liveness = view["status"], doc["liveness"]
    name = f"  ({esc(view['run']['name'])})" if view["run"]["name"] else ""
    out(f"[bold]{esc(doc['training_id'])}[/bold]{name}")
    out(
        f"  status    [{STATUS_STYLE.get(status, '')}]{esc(status)}[/]  "
        f"[{LIVENESS_STYLE.get(liveness, '')}]{esc(liveness)}[/]  {esc(view['message'])}"
    )
    if liveness == "lost":
        out(f"  v1 shows  [red]{esc(doc['v1']['status'])}: {esc(doc['v1']['message'])}[/red]")
    progress = view["progress"]
    parts = [fmt_progress(progress["fraction"])]
    if progress["epoch"] is not None:
        parts.append(f"epoch {progress['epoch']}/{progress['total_epochs'] or '?'}")
    if progress["step"] is not None:
        parts.append(f"step {progress['step']}/{progress['total_steps'] or '?'}")
    out(f"  progress  {'  '.join(parts)}")
    timings = view["timings"]
    out(
        f"  started   {fmt_time(timings['started_at'] or timings['created_at'])}   "
        f"duration {fmt_duration(timings['duration'])}   "
        f"last event {fmt_time(timings['last_event_at'])}"
    )
    out(f"  flow      {esc(fmt_flow(view['flow']))}")
    out(f"  log       {esc(doc['log']['path'])}  (bad lines: {doc['log']['bad_lines']})")

    out("\n[bold]timeline[/bold]")
    timeline = view["timeline"]
    end = timings["finished_at"] or timings["last_event_at"]
    for index, entry in enumerate(timeline):
        following = timeline[index + 1]["timestamp"] if index + 1 < len(timeline) else None
        current = following is None and not view["terminal"]
        if following is not None:
            until = following
        elif view["terminal"] or liveness == "lost":
            until = end
        else:
            until = doc["now"]
        spent = fmt_duration(max(0.0, until - entry["timestamp"]) if until is not None else None)
        if current:
            spent += " (lost)" if liveness == "lost" else " so far"
        out(
            f"  {fmt_time(entry['timestamp'])}  {esc(entry['status']):<13}{spent:>12}  "
            f"{esc(entry['message'])}"
        )
    if not timeline:
        out("  (no status yet)")

    out("\n[bold]metrics[/bold]")
    metrics = view["metrics"]
    for key in sorted(metrics):
        out(f"  {esc(key):<20} {fmt_number(metrics[key])}")
    if view["best_loss"] is not None:
        out(f"  {'best_loss':<20} {fmt_number(view['best_loss'])}")
    loss = doc["metric_history"].get("loss")
    if loss and loss["windows"]:
        values = [w["last"] for w in loss["windows"]]
        count = loss["count"]
        plural = "s" if count != 1 else ""
        out(f"  loss trend           {sparkline(values)}  ({count} sample{plural})")
    if not metrics:
        out("  (none yet)")

    if view["errors"]:
        out(f"\n[bold]errors[/bold] ({view['error_count']})")
        for error in view["errors"]:
            retry = "retryable" if error["is_retryable"] else "not retryable"
            out(
                f"  {fmt_time(error['timestamp'])}  [red]{esc(error['error_code'])}[/red]  "
                f"{esc(error['message'])}  ({retry})"
            )
            for key, value in sorted((error["details"] or {}).items()):
                text = str(value)
                if key == "traceback":
                    text = text.strip().splitlines()[-1] if text.strip() else text
                out(f"      {esc(key)}: {esc(text[:200])}")
    if view["anomalies"]:
        out(f"\n[bold]anomalies[/bold] ({view['anomaly_count']})")
        for anomaly in view["anomalies"]:
            out(f"  seq {anomaly['seq']:<6} {esc(anomaly['kind']):<18} {esc(anomaly['detail'])}")
    stats = view["stats"]
    log_doc = doc.get("log") or {}
    # Sources that cannot tell coalesced from missing (NATS) give neither.
    coalesced, missing = log_doc.get("coalesced", 0), log_doc.get("missing", 0)
    counts = [f"events {stats['events']}"]
    if coalesced:
        counts.append(f"coalesced {coalesced} (normal)")
    if missing or stats["duplicates"] or stats["dropped"]:
        counts.append(
            f"missing {missing}, duplicates {stats['duplicates']}, dropped {stats['dropped']}"
        )
    out("\n  " + ", ".join(counts))
