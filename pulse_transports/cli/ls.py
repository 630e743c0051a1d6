"""``pulse ls``: list runs, newest first; and helpers the run-reading commands share.

This module owns the ``ls`` command and the small pieces ``show``, ``v1``,
``replay``, ``watch`` and ``validate`` share: turning ``--home`` into an
existing folder, checking a training id, one-line errors with the CLI's exit
codes, JSON output and human formatting. Heavy imports (rich, the reducer)
happen inside the commands, so ``pulse --help`` stays fast.

``pulse ls --json`` prints one JSON object (keys sorted)::

    {
      "home": "/path/to/home",
      "runs": [                      # newest first (by the run's first event)
        {
          "training_id": "20261129-013724-123-9f2c41d07b",
          "name": "pulse demo (numpy MLP)" | null,
          "status": "idle|preparing|running|cooling_down|done|error|cancelled",
          "liveness": "alive|stale|lost|ended",
          "message": "last status message",
          "progress": 0.0-1.0 | null,   # pulse_core.projections.progress_fraction
          "epoch": int | null, "total_epochs": int | null,
          "step": int | null, "total_steps": int | null,
          "loss": float | null,         # latest loss
          "best_loss": float | null,
          "created_at": float | null,   # Unix seconds (first event)
          "started_at": float | null,   # first preparing/running
          "finished_at": float | null,  # terminal status
          "last_event_at": float | null,
          "duration": float | null,     # seconds; a lost run's ends at its last event
          "error": {"error_code": str, "message": str, "is_retryable": bool} | null,
          "error_count": int,
          "flow": {"flow_id", "flow_run_id", "flow_step_id", "attempt"} | null,
          "log": "/path/to/home/logs/training/<id>.jsonl",
          "bad_lines": int              # undecodable lines in the log
        }
      ]
    }

Every command here that judges liveness (``ls``, ``show``, ``v1``, ``watch``)
also heals the home's ``training_status.json`` when it shows a run that is
lost or ended (:func:`heal_v1`), so raw v1 pollers agree with these commands.

Exit codes (all commands): 0 ok; 1 the checked thing failed (``validate``
found errors; ``watch`` saw the run end badly); 2 usage (bad option, malformed
id); 3 not found (unknown id, missing home, no run); 4 unreadable file
(``replay``).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from pulse_core._log import get_logger
from pulse_transports.cli._common import (
    EXIT_NOT_FOUND,
    home_source,
    id_error,
    main,
    resolve_config,
)
from pulse_transports.cli._source import file_only, open_source, source_options
from pulse_transports.config import Config

log = get_logger("pulse.cli")

#: :data:`pulse_transports.v1.V1_FILE`, named here so a home without one skips that import
#: (tests/transports/test_fast_start.py checks they agree).
V1_FILE_NAME = "training_status.json"

STATUS_CHOICES = (
    "idle",
    "preparing",
    "running",
    "cooling_down",
    "done",
    "error",
    "cancelled",
    "alive",
    "stale",
    "lost",
    "ended",
)
LIVENESS_STYLE = {"alive": "green", "stale": "yellow", "lost": "red", "ended": "dim"}
STATUS_COLOR = {"running": "green", "done": "green", "error": "red", "cancelled": "yellow"}
LIVENESS_COLOR = {"alive": "green", "stale": "yellow", "lost": "red"}
STATUS_STYLE = {
    "running": "bold green",
    "preparing": "cyan",
    "cooling_down": "cyan",
    "done": "green",
    "error": "bold red",
    "cancelled": "yellow",
    "idle": "dim",
}


class CommandError(click.ClickException):
    """A one-line error with one of the CLI's exit codes."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def fail(message: str, exit_code: int) -> NoReturn:
    """Stop the command with ``Error: message`` on stderr and *exit_code*."""
    raise CommandError(message, exit_code)


def open_home(home: Path | None) -> Config:
    """Resolve the configuration and insist that its home exists (exit 3 if not)."""
    config = resolve_config(home)
    problem = home_problem(config.home, home)
    if problem is not None:
        fail(problem, EXIT_NOT_FOUND)
    return config


def home_problem(path: Path, home: Path | None) -> str | None:
    """Why *path* cannot be used as the home (``None`` if it is a folder).

    Names the real problem (a file is "a file", not "missing") and only
    suggests ``--home`` when the user did not give one.
    """
    if path.is_dir():
        return None
    source = home_source(home)
    what = "is a file, not a folder" if path.exists() else "does not exist"
    if source == "--home":
        return f"PULSE home {path} {what}"
    if source == "PULSE_HOME":
        return f"PULSE home {path} (from PULSE_HOME) {what}"
    hint = "; run a training or pulse demo here first, or use --home or set PULSE_HOME"
    return f"PULSE home {path} {what}{hint if not path.exists() else ''}"


def heal_v1(config: Config, records: Sequence[Any] | None = None) -> None:
    """Make the home's v1 snapshot honest if it shows a run that is lost or ended.

    Every command that judges liveness calls it, so a raw ``training_status.json``
    never says ``running`` for a dead writer once anyone has looked
    (:func:`pulse_transports.v1.heal_v1_snapshot`). Cheap: a file read,
    and runs are recovered only when the slot shows an unfinished status and
    *records* (the home's runs) were not given. Never fails the command.
    """
    option = (config.transport_options.get("v1") or {}).get("path")
    path = config.home / str(option) if option else None
    if not (path or config.home / V1_FILE_NAME).exists():
        return  # nothing to heal; skips importing the v1 adapter (a tenth of ``pulse ls``)
    from pulse_transports.v1 import heal_v1_snapshot

    try:
        heal_v1_snapshot(
            config.home,
            path,
            stale_after=config.stale_after,
            lost_after=config.lost_after,
            records=records,
        )
    except Exception as exc:  # noqa: BLE001 - a repair must never break a read
        log.warning("pulse could not check the v1 snapshot", error=f"{type(exc).__name__}: {exc}")


def check_id(training_id: str) -> str:
    """Validate a training id argument (exit 2 with the reason if malformed)."""
    from pulse_core.errors import InvalidTrainingId
    from pulse_core.events import validate_training_id

    try:
        return validate_training_id(training_id)
    except InvalidTrainingId:
        # click.BadParameter exits with EXIT_USAGE (2).
        raise click.BadParameter(id_error(training_id), param_hint="'ID'") from None


def print_json(value: Any, sort_keys: bool = True) -> None:
    """Print *value* as indented JSON, keys sorted unless *sort_keys* is false."""
    import orjson

    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    if sort_keys:
        option |= orjson.OPT_SORT_KEYS
    data = orjson.dumps(value, option=option)
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def fmt_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12.3s``; ``-`` when unknown (or not a finite number)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def fmt_time(timestamp: float | None) -> str:
    """Local time ``2026-11-29 01:37:24``; ``-`` when unknown.

    A timestamp no calendar can show (milliseconds written as seconds,
    1.7e12, is year 55840) is shown raw: ``@1700000000000 (not a time)``.
    """
    if timestamp is None:
        return "-"
    try:
        return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"@{timestamp:.15g} (not a time)"


def fmt_clock(timestamp: float) -> str:
    """Local time of day ``01:37:24``; a raw timestamp when it is not a time."""
    text = fmt_time(timestamp)
    return text[11:] if text[:1].isdigit() else text


def fmt_progress(fraction: float | None) -> str:
    """``42.0%``; ``-`` when unknown."""
    return "-" if fraction is None else f"{100.0 * fraction:.1f}%"


def fmt_number(value: float | None) -> str:
    """A metric value in 4 significant digits; ``-`` when unknown."""
    return "-" if value is None else f"{value:.4g}"


def fmt_flow(flow: dict[str, Any] | None) -> str:
    """``flow_id/flow_run_id#step (attempt n)``; ``-`` without a flow link."""
    if not flow:
        return "-"
    text = "/".join(str(flow[k]) for k in ("flow_id", "flow_run_id") if flow.get(k))
    if flow.get("flow_step_id"):
        text += f"#{flow['flow_step_id']}"
    if flow.get("attempt") is not None:
        text += f" (attempt {flow['attempt']})"
    return text


def select_rows(
    rows: list[dict[str, Any]], status: str | None, flow_run_id: str | None, limit: int | None
) -> list[dict[str, Any]]:
    """Filter ``ls`` rows by status or liveness and flow run, then keep *limit*."""
    if status is not None:
        rows = [r for r in rows if status in (r["status"], r["liveness"])]
    if flow_run_id is not None:
        rows = [r for r in rows if (r.get("flow") or {}).get("flow_run_id") == flow_run_id]
    return rows[:limit] if limit is not None else rows


@main.command("ls")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (its shape: docs/reference/cli.md, JSON output).",
)
@click.option(
    "--status",
    type=click.Choice(STATUS_CHOICES),
    default=None,
    help="Only runs with this status or liveness.",
)
@click.option("--flow-run-id", default=None, help="Only runs of this flow run.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N runs.")
@source_options
def ls_command(
    as_json: bool,
    status: str | None,
    flow_run_id: str | None,
    limit: int | None,
    home: Path | None,
    source: str,
    **connection: Any,
) -> None:
    """List runs, newest first: status, liveness, progress, loss, timing, flow.

    Liveness: alive (heard from recently), stale (silent longer than
    stale_after), lost (writer gone, or silent longer than lost_after) or ended.

    \b
    Examples:
      pulse ls
      pulse ls --status running --limit 5
      pulse ls --status lost --json
      pulse ls --flow-run-id fr-42 --home /data/pulse
      pulse ls --source nats --url nats://127.0.0.1:4222
    """
    from pulse_transports.history import recover

    if not file_only(source, connection):
        ls_other(source, as_json, status, flow_run_id, limit, home, connection)
        return
    config = open_home(home)
    records = recover(config.home, stale_after=config.stale_after, lost_after=config.lost_after)
    heal_v1(config, records)
    rows = select_rows([r.summary for r in records], status, flow_run_id, limit)
    if as_json:
        print_json({"home": str(config.home), "runs": rows})
        return
    render_table(rows, config.home)


#: Shorter headers for a narrow terminal (the values are narrower than the headers).
SHORT_HEADERS = {"LIVENESS": "LIVE", "PROGRESS": "PROG", "DURATION": "TIME"}


def fit_table(
    header: tuple[str, ...], cells: list[tuple[str, ...]], columns: int
) -> tuple[tuple[str, ...], list[tuple[str, ...]], str]:
    """Make an ``ls`` table fit *columns* without cutting a value (ids stay whole).

    In order, until it fits: drop an all-empty FLOW column, single-space
    gaps, short headers. Returns the header, the cells and the gap.
    """

    def width(head: tuple[str, ...], rows: list[tuple[str, ...]], gap: str) -> int:
        widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(head)]
        return sum(widths) + len(gap) * (len(widths) - 1)

    gap = "  "
    if width(header, cells, gap) <= columns:
        return header, cells, gap
    if header[-1] == "FLOW" and all(c[-1] == "-" for c in cells):
        header, cells = header[:-1], [c[:-1] for c in cells]
        if width(header, cells, gap) <= columns:
            return header, cells, gap
    gap = " "
    if width(header, cells, gap) <= columns:
        return header, cells, gap
    return tuple(SHORT_HEADERS.get(h, h) for h in header), cells, gap


def ls_other(
    source: str,
    as_json: bool,
    status: str | None,
    flow_run_id: str | None,
    limit: int | None,
    home: Path | None,
    connection: dict[str, Any],
) -> None:
    """``ls`` from a source other than the home's logs: NATS, or a plugin's rows."""
    if source == "nats":
        from pulse_transports.cli._natsread import ls_nats

        ls_nats(as_json, status, flow_run_id, limit, home, connection)
        return
    found = open_source(source, home, connection)
    try:
        rows = select_rows([dict(r.summary) for r in found.runs()], status, flow_run_id, limit)
    finally:
        found.close()
    if as_json:
        print_json({"source": {"kind": source}, "runs": rows})
    else:
        render_table(rows, Path(source))


def render_table(rows: list[dict[str, Any]], home: Path) -> None:
    """Print ``ls`` rows as an aligned table (colour only on a terminal).

    Written by hand rather than with rich's Table: a thousand rows render in
    milliseconds instead of most of a second. On a terminal the table fits
    its width (:func:`fit_table`); piped, lines are complete and uncoloured.
    """
    if not rows:
        click.echo(f"no runs under {home}")
        return
    now = time.time()
    header: tuple[str, ...] = (
        "ID",
        "STATUS",
        "LIVENESS",
        "PROGRESS",
        "LOSS",
        "STARTED",
        "DURATION",
        "FLOW",
    )
    cells: list[tuple[str, ...]] = []
    for row in rows:
        started = row["started_at"] if row["started_at"] is not None else row["created_at"]
        when = fmt_time(started)
        if started is not None and 0 <= now - started < 86400:
            when = fmt_clock(started)  # today: the time is enough
        cells.append(
            (
                row["training_id"],
                row["status"],
                row["liveness"],
                fmt_progress(row["progress"]),
                fmt_number(row["loss"]),
                when,
                fmt_duration(row["duration"]),
                fmt_flow(row["flow"]),
            )
        )
    color = sys.stdout.isatty()
    gap = "  "
    if color:  # on a terminal, fit its width; piped, every line stays complete
        header, cells, gap = fit_table(header, cells, shutil.get_terminal_size().columns)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def paint(text: str, column: int, width: int) -> str:
        padded = text.ljust(width)
        if not color:
            return padded
        style = (STATUS_COLOR if column == 1 else LIVENESS_COLOR if column == 2 else {}).get(text)
        return click.style(padded, fg=style) if style else padded

    out = [gap.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    if color:
        out[0] = click.style(out[0], bold=True)
    for cell in cells:
        line = gap.join(paint(t, i, w) for i, (t, w) in enumerate(zip(cell, widths, strict=True)))
        out.append(line.rstrip())
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
