"""``pulse watch [ID]``: follow a run live in the terminal.

This module owns the ``watch`` command: a progress bar with percent and ETA,
the latest metrics, and a line for every status change, error and liveness
change as it happens (at most ~10 redraws a second), until the run ends or
is lost. Without an ID it follows the most recently active live run (alive
or stale), waiting for one to start if there is none.

The log is followed with :class:`pulse_transports.follow.LogFollower` from
the checkpoint recovery stored (so a long log is not re-read), woken by OS
notifications (``watchfiles``) or polling.

Exit status: 0 when the run ends ``done``, when ``--timeout`` passes, with
``--once`` and on Ctrl-C; 1 (``EXIT_FAILED``) when it ends ``error`` or
``cancelled`` or is lost; 3 for an unknown ID or missing home.

``pulse watch --json`` prints one JSON object per line (JSON Lines), at most
~10 a second plus one per status change, error and liveness change. A
``status`` or ``error`` line shows the run as it was right after that event
(the events of one read are folded one by one), so ``cooling_down`` then
``done`` read together print two lines, ``cooling_down`` first; a status
event the lifecycle refuses (no change) prints none::

    {"reason": "start|update|status|error|liveness|end",
     "eta": float | null,       # seconds left, from the progress rate since start
     "run": {...}}              # the `pulse ls --json` row (see cli/ls.py)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Self

import click

from pulse_core.closing import ClosesOnExit
from pulse_core.liveness import Thresholds
from pulse_transports.cli._common import EXIT_FAILED, EXIT_NOT_FOUND, main, resolve_config
from pulse_transports.cli._source import file_only, source_options
from pulse_transports.cli.ls import (
    LIVENESS_STYLE,
    STATUS_STYLE,
    check_id,
    fail,
    fmt_clock,
    fmt_duration,
    fmt_number,
    fmt_progress,
    heal_v1,
    open_home,
)

#: Least seconds between two redraws (10 a second).
REDRAW: float = 0.1
#: Seconds between two writer-lock checks.
CHECK_EVERY: float = 1.0


def eta_of(row: dict[str, Any], now: float) -> float | None:
    """Seconds left at the run's average rate since it started; None if unknown."""
    fraction = row.get("progress")
    started = row.get("started_at") or row.get("created_at")
    if not fraction or fraction >= 1.0 or started is None or row["liveness"] == "ended":
        return None
    elapsed = now - started
    if elapsed <= 0:
        return None
    return float(elapsed * (1.0 - fraction) / fraction)


class RunWatch(ClosesOnExit):
    """Follow one run and tell what changed: the logic of ``watch``, no drawing.

    Args:
        home: the PULSE home.
        record: the run as :mod:`pulse_transports.history` recovered it.
        stale_after, lost_after: the liveness thresholds.
    """

    def __init__(self, home: Path, record: Any, *, stale_after: float, lost_after: float) -> None:
        from pulse_transports.follow import LogFollower
        from pulse_transports.notify import Notifier

        self.home = home
        self.training_id: str = record.training_id
        self.follower = LogFollower(
            record.path, checkpoint=record.checkpoint(), training_id=record.training_id
        )
        self.notifier = Notifier(record.path.parent)
        self.stale_after = stale_after
        self.lost_after = lost_after
        self.liveness: str = record.liveness
        self.writer: bool | None = record.writer
        self._checked = 0.0
        self._settled = False
        #: The state right after each status/error event of the last step
        #: (by the event's id), for lines that tell the run as it was then.
        self.after: dict[int, Any] = {}
        #: Status events of the last step that changed the status.
        self.changed_status: set[int] = set()

    def step(self, timeout: float) -> tuple[list[Any], str | None]:
        """Wait up to *timeout* for news; return new events and a new liveness (or None)."""
        from pulse_transports.liveness import check_writer, run_liveness

        self.notifier.wait(timeout)
        before = self.follower.state
        events = self.follower.poll()
        now = time.time()
        state = self.follower.state
        if events or now - self._checked >= CHECK_EVERY:
            self._checked = now
            self.writer = (
                None if state.is_terminal else check_writer(self.home, self.training_id, state)
            )
            if self.writer is False and not self._settled:
                self._settled = True
                events += self.follower.settle()
                state = self.follower.state
        liveness = run_liveness(
            state,
            now=now,
            writer=self.writer,
            stale_after=self.stale_after,
            lost_after=self.lost_after,
        )
        changed = liveness if liveness != self.liveness else None
        self.liveness = liveness
        self._fold_one_by_one(before, events)
        return events, changed

    def _fold_one_by_one(self, before: Any, events: list[Any]) -> None:
        """Keep the state after each status/error event of *events* (see ``after``)."""
        from pulse_core.events import ErrorReported, StatusChanged
        from pulse_core.reducer import Folder

        self.after = {}
        self.changed_status = set()
        if not any(isinstance(e, StatusChanged | ErrorReported) for e in events):
            return
        folder = Folder(before)
        status = before.status
        for event in events:
            folder.apply(event)
            if isinstance(event, StatusChanged | ErrorReported):
                state = folder.state
                self.after[id(event)] = state
                if isinstance(event, StatusChanged) and state.status != status:
                    self.changed_status.add(id(event))
                status = state.status

    def row(self, now: float, state: Any = None) -> dict[str, Any]:
        """The run's ``ls`` row as of now (of *state*, default the latest)."""
        from pulse_transports.history import summarize

        return summarize(
            self.follower.state if state is None else state,
            liveness=self.liveness,  # type: ignore[arg-type]
            now=now,
            path=self.follower.path,
        )

    def close(self) -> None:
        """Stop following."""
        self.notifier.close()
        self.follower.close()


def _pick(home: Path, wait: float | None, thresholds: Thresholds) -> Any:
    """The most recently active live run, waiting up to *wait* seconds for one."""
    from pulse_transports.file import log_dir
    from pulse_transports.history import recover, v1_choice
    from pulse_transports.notify import Notifier

    deadline = None if wait is None else time.monotonic() + wait
    notifier: Notifier | None = None
    told = False
    try:
        while True:
            # A fresh directory has no home yet: the first run creates it.
            records = recover(home, **thresholds) if home.is_dir() else []
            live = [r for r in records if r.liveness in ("alive", "stale")]
            if live:
                return v1_choice(live)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if not told:
                click.echo(f"waiting for a run to start under {home} (Ctrl-C to stop)", err=True)
                told = True
            if notifier is None:
                notifier = Notifier(log_dir(home), poll_interval=0.25)
            notifier.wait(0.5)
            if notifier.mode == "polling" and log_dir(home).is_dir():
                notifier.close()
                notifier = None  # the folder appeared: notifications may work now
    finally:
        if notifier is not None:
            notifier.close()


@main.command("watch")
@click.argument("training_id", metavar="[ID]", required=False)
@click.option("--once", is_flag=True, help="Print the current state once and exit.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop watching after this many seconds (exit 0).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON Lines (their shape: docs/reference/cli.md, JSON output).",
)
@source_options
def watch_command(
    training_id: str | None,
    once: bool,
    timeout: float | None,
    as_json: bool,
    home: Path | None,
    source: str,
    **connection: Any,
) -> None:
    """Follow a run live: progress bar with ETA, metrics, status changes, errors.

    Without ID, follows the most recently active live run, waiting for one
    if none is running (also before the home folder exists: start it before
    the first run); with --timeout and no run by then, exits 0. Ends when
    the run ends (exit 0 if done, 1 if error or cancelled) or is lost
    (exit 1); Ctrl-C exits with 0.

    \b
    Examples:
      pulse watch
      pulse watch 20261129-013724-123-9f2c41d07b
      pulse watch my-run --once
      pulse watch --json --timeout 60 > progress.jsonl
      pulse watch --source nats
    """
    from pulse_core.errors import RunNotFound
    from pulse_transports.history import load_run

    if not file_only(source, connection):
        if source != "nats":
            raise click.UsageError(f"watch reads --source file or nats, not {source!r}")
        from pulse_transports.cli._natsread import watch_nats

        watch_nats(training_id, once, timeout, as_json, home, connection)
        return

    if training_id is not None:
        check_id(training_id)
    if training_id is None and not once:
        # Waiting for the first run works before the home exists (the quickstart's
        # "in a second terminal, before the run"); a file is still an error.
        config = resolve_config(home)
        if config.home.exists() and not config.home.is_dir():
            open_home(home)
    else:
        config = open_home(home)
    thresholds = config.thresholds
    try:
        if training_id is not None:
            try:
                record = load_run(config.home, training_id, **thresholds)
            except RunNotFound as exc:
                fail(str(exc), EXIT_NOT_FOUND)
        else:
            record = _pick(config.home, 0 if once else timeout, thresholds)
            if record is None and not once:
                # --timeout ran out before any run started: as the help says, exit 0.
                click.echo(f"no run started under {config.home} within {timeout:g}s", err=True)
                raise SystemExit(0)
            if record is None:
                fail(f"no live run under {config.home} (see pulse ls)", EXIT_NOT_FOUND)
        heal_v1(config)
        code = _watch(config.home, record, once, timeout, as_json, thresholds)
        if code == EXIT_FAILED:
            heal_v1(config)  # it ended badly or was lost while watched
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)


def _watch(
    home: Path,
    record: Any,
    once: bool,
    timeout: float | None,
    as_json: bool,
    thresholds: Thresholds,
) -> int:
    from rich.console import Console

    # Piped: complete lines, never re-wrapped at the console width.
    console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
    deadline = None if timeout is None else time.monotonic() + timeout
    with RunWatch(home, record, **thresholds) as watch:
        screen = _Screen(console, watch, as_json)
        done = screen.start(once)
        if done is not None:
            return done
        with screen:
            while True:
                wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                events, changed = watch.step(max(wait, 0.0))
                for event in events:
                    screen.event(event)
                if changed is not None:
                    screen.emit("liveness")
                if watch.liveness in ("ended", "lost"):
                    return screen.finish()
                screen.tick(bool(events))
                if deadline is not None and time.monotonic() >= deadline:
                    return 0


class _Screen(ClosesOnExit):
    """Draws a RunWatch: a rich Live panel, or JSON Lines."""

    def __init__(self, console: Any, watch: RunWatch, as_json: bool) -> None:
        self.console = console
        self.watch = watch
        self.as_json = as_json
        self.live: Any = None
        self._drawn = 0.0
        self._dirty = False

    def __enter__(self) -> Self:
        if not self.as_json:
            from rich.live import Live

            self.live = Live(
                self._render(), console=self.console, auto_refresh=False, transient=True
            )
            self.live.start()
        return self

    def close(self) -> None:
        """Take the live panel down (the lines said stay)."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    def start(self, once: bool) -> int | None:
        """Show the run as it stands; the exit status when there is nothing to follow."""
        self.emit("start")
        if once:
            self.finish()
            return 0
        if self.watch.liveness in ("ended", "lost"):
            return self.finish()
        return None

    def say(self, text: str) -> None:
        """Print a line above the live panel (untrusted parts must be escaped)."""
        if not self.as_json:
            self.console.print(text)

    def emit(self, reason: str, state: Any = None) -> None:
        """Report a change: a JSON line, or a printed line (*state*: the run as of then)."""
        from rich.markup import escape

        now = time.time()
        # (A watch without per-event states, e.g. pulse nats watch, takes no state.)
        row = self.watch.row(now) if state is None else self.watch.row(now, state)
        if self.as_json:
            print_json_line({"reason": reason, "eta": eta_of(row, now), "run": row})
            return
        liveness = row["liveness"]
        style = LIVENESS_STYLE.get(liveness, "")
        if reason == "start":
            self.say(
                f"watching [bold]{escape(row['training_id'])}[/bold]: {escape(row['status'])} "
                f"([{style}]{liveness}[/])  log {escape(row['log'])}"
            )
        elif reason == "liveness":
            if liveness == "stale":
                self.say(
                    f"[yellow]run is stale: nothing heard for over "
                    f"{self.watch.stale_after:g}s[/yellow]"
                )
            elif liveness == "alive":
                self.say("[green]run is alive again[/green]")
        self._redraw(force=True)

    def event(self, event: Any) -> None:
        """Report one new event if it matters (a status change, an error).

        Untrusted text from the log is escaped, never read as markup.
        """
        from rich.markup import escape

        from pulse_core.events import ErrorReported, StatusChanged

        after: dict[int, Any] = getattr(self.watch, "after", {})
        changed: set[int] | None = getattr(self.watch, "changed_status", None)
        if isinstance(event, StatusChanged):
            if changed is not None and id(event) not in changed:
                pass  # refused by the lifecycle (or a repeat): not a change
            elif self.as_json:
                self.emit("status", after.get(id(event)))
            else:
                style = STATUS_STYLE.get(event.status, "")
                message = f"  {escape(event.message)}" if event.message else ""
                self.say(
                    f"{escape(fmt_clock(event.timestamp))} "
                    f"status [{style}]{escape(event.status)}[/]{message}"
                )
        elif isinstance(event, ErrorReported):
            if self.as_json:
                self.emit("error", after.get(id(event)))
            else:
                retry = "retryable" if event.is_retryable else "not retryable"
                self.say(
                    f"[red]error {escape(event.error_code)}[/red]: "
                    f"{escape(event.message)} ({retry})"
                )
        self._dirty = True

    def tick(self, news: bool) -> None:
        """Redraw if there is news and the last redraw is old enough."""
        self._dirty = self._dirty or news
        self._redraw()

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self._dirty or now - self._drawn < REDRAW):
            return
        self._drawn = now
        self._dirty = False
        if self.as_json:
            if not force:
                row = self.watch.row(time.time())
                print_json_line({"reason": "update", "eta": eta_of(row, time.time()), "run": row})
        elif self.live is not None:
            self.live.update(self._render(), refresh=True)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = time.time()
        row = self.watch.row(now)
        fraction = row["progress"]
        eta = eta_of(row, now)
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            ProgressBar(total=100.0, completed=100.0 * (fraction or 0.0), width=40),
            f"{fmt_progress(fraction)}",
            f"ETA {fmt_duration(eta)}" if eta is not None else "",
        )
        parts = [f"{row['status']} ({row['liveness']})"]
        if row["epoch"] is not None:
            parts.append(f"epoch {row['epoch']}/{row['total_epochs'] or '?'}")
        if row["step"] is not None:
            parts.append(f"step {row['step']}/{row['total_steps'] or '?'}")
        parts.append(f"elapsed {fmt_duration(row['duration'])}")
        metrics = self.watch.follower.state.metrics
        shown = [f"{k} {fmt_number(v)}" for k, v in sorted(metrics.items())[:8]]
        # Text, not str: metric names come from the log and are never markup.
        return Group(grid, Text("  ".join(parts)), Text("  ".join(shown) or "no metrics yet"))

    def finish(self) -> int:
        """Say how the run ended (or that it is lost); return the exit status."""
        self.close()
        row = self.watch.row(time.time())
        if self.as_json:
            print_json_line({"reason": "end", "eta": None, "run": row})
        else:
            self.console.print(self._render())
            from rich.markup import escape

            tid = escape(row["training_id"])
            if row["liveness"] == "lost":
                self.say(
                    f"[red]run {tid} is lost: the training process is gone "
                    f"and the run never ended (last status {escape(row['status'])})[/red]"
                )
            elif row["liveness"] == "ended":
                self.say(f"run {tid} ended: {escape(row['status'])}  {escape(row['message'])}")
        if row["liveness"] == "lost" or row["status"] in ("error", "cancelled"):
            return EXIT_FAILED
        return 0


def print_json_line(value: Any) -> None:
    """Print one compact JSON line (keys sorted) and flush."""
    import sys

    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_SORT_KEYS) + b"\n")
    sys.stdout.flush()
