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

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import click

from pulse_core._log import get_logger
from pulse_transports.cli._common import (
    EXIT_NOT_FOUND,
    home_source,
    id_error,
    main,
    resolve_config,
)
from pulse_transports.cli._detail import LIVENESS_STYLE, STATUS_STYLE
from pulse_transports.cli._fast import V1_FILE_NAME
from pulse_transports.cli._source import file_only, open_source, source_options
from pulse_transports.cli._table import (
    LIVENESS_COLOR,
    STATUS_CHOICES,
    STATUS_COLOR,
    fmt_clock,
    fmt_duration,
    fmt_flow,
    fmt_number,
    fmt_progress,
    fmt_time,
    print_json,
    render_table,
    select_rows,
)
from pulse_transports.config import Config

if TYPE_CHECKING:
    from pulse_transports.history import RunRecord

log = get_logger("pulse.cli")


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
            records=records,
            **config.thresholds,
        )
    except Exception as exc:  # noqa: BLE001 - a repair must never break a read
        log.warning("pulse could not check the v1 snapshot", error=f"{type(exc).__name__}: {exc}")


def shown_run(config: Config, training_id: str | None, empty: str) -> RunRecord:
    """The run ``pulse show`` and ``pulse v1`` show: *training_id*, or the v1 slot's choice.

    Heals the v1 snapshot on the way (:func:`heal_v1`). Fails the command
    (``EXIT_NOT_FOUND``) with *empty* when the home has no runs, or when
    *training_id* is not one of them.
    """
    from pulse_core.errors import RunNotFound
    from pulse_transports.history import load_run, recover, v1_choice

    stale_after, lost_after = config.stale_after, config.lost_after
    if training_id is None:
        records = recover(config.home, stale_after=stale_after, lost_after=lost_after)
        heal_v1(config, records)
        record = v1_choice(records)
        if record is None:
            fail(empty, EXIT_NOT_FOUND)
        return record
    try:
        record = load_run(config.home, training_id, stale_after=stale_after, lost_after=lost_after)
    except RunNotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    heal_v1(config)  # the v1 slot may show this run, now lost or ended
    return record


def check_id(training_id: str) -> str:
    """Validate a training id argument (exit 2 with the reason if malformed)."""
    from pulse_core.errors import InvalidTrainingId
    from pulse_core.events import validate_training_id

    try:
        return validate_training_id(training_id)
    except InvalidTrainingId:
        # click.BadParameter exits with EXIT_USAGE (2).
        raise click.BadParameter(id_error(training_id), param_hint="'ID'") from None


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
        ls_other(source, LsQuery(as_json, status, flow_run_id, limit, home), connection)
        return
    config = open_home(home)
    records = recover(config.home, **config.thresholds)
    heal_v1(config, records)
    rows = select_rows([r.summary for r in records], status, flow_run_id, limit)
    if as_json:
        print_json({"home": str(config.home), "runs": rows})
        return
    render_table(rows, config.home)


class LsQuery(NamedTuple):
    """What ``pulse ls`` was asked for, whichever source answers it."""

    as_json: bool
    status: str | None
    flow_run_id: str | None
    limit: int | None
    home: Path | None


def ls_other(source: str, query: LsQuery, connection: dict[str, Any]) -> None:
    """``ls`` from a source other than the home's logs: NATS, or a plugin's rows."""
    if source == "nats":
        from pulse_transports.cli._natsread import ls_nats

        ls_nats(query, connection)
        return
    found = open_source(source, query.home, connection)
    try:
        summaries = [dict(r.summary) for r in found.runs()]
    finally:
        found.close()
    rows = select_rows(summaries, query.status, query.flow_run_id, query.limit)
    if query.as_json:
        print_json({"source": {"kind": source}, "runs": rows})
    else:
        render_table(rows, Path(source))


#: The shared helpers, with those of :mod:`pulse_transports.cli._table` re-exported.
__all__ = [
    "LIVENESS_COLOR",
    "LIVENESS_STYLE",
    "STATUS_CHOICES",
    "STATUS_COLOR",
    "STATUS_STYLE",
    "V1_FILE_NAME",
    "CommandError",
    "LsQuery",
    "check_id",
    "fail",
    "fmt_clock",
    "fmt_duration",
    "fmt_flow",
    "fmt_number",
    "fmt_progress",
    "fmt_time",
    "heal_v1",
    "home_problem",
    "ls_command",
    "open_home",
    "print_json",
    "render_table",
    "select_rows",
]
