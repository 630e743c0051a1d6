"""``pulse replay FILE``: fold any log file and print the resulting state.

This module owns the ``replay`` command. The file is read like a follower
reads it (:func:`pulse_transports.follow.read_log`): bad lines are skipped,
counted and reported with their line numbers, a last line without newline is
decoded if whole.

Readable or not (exit 4, ``EXIT_UNREADABLE``, with a one-line reason):

* the path does not exist, is not a regular file, or cannot be read: unreadable;
* not one line decodes as an event (an empty file too): unreadable;
* otherwise readable, whatever else is wrong (bad lines, anomalies).
* A file with events of several training ids is readable: each run is folded
  on its own (:func:`pulse_core.reducer.replay_runs`), in order of first
  appearance -- so a concatenation of logs replays as many runs.

Liveness: a file inside a home (``<home>/logs/training/<id>.jsonl``, or
given by id with ``--home``) is checked against its writer lock; any other
file only by the silence since its last event.

``pulse replay FILE --json`` prints one JSON object (keys sorted)::

    {
      "file": str,
      "lines": int,            # lines read (a last line without newline counts)
      "events": int,           # events decoded
      "bad_lines": int, "blank_lines": int,
      "bad": [{"line": int, "offset": int, "reason": str}],   # the first 20
      "runs": [
        {"training_id": str, "liveness": "alive|stale|lost|ended",
         "view": {...},        # pulse_core.projections.to_view
         "v1": {...},          # to_v1 with the liveness
         "history": {...}}     # to_history_record
      ]
    }

``pulse replay FILE --cloudevents`` prints, instead, every decodable event of
the file in file order as one CloudEvents 1.0 JSON envelope per line
(structured mode, specs/protocol.md "CloudEvents 1.0"): no code needed to
feed a broker or an HTTP endpoint. ``source`` is ``--source`` if given, else
the producer named by the run's ``meta`` (``/pulse/<host>/<pid>``), else
``/pulse/training``. Lines that do not decode are skipped and counted on
stderr; exit 4 when none decodes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pulse_transports.cli._common import (
    EXIT_UNREADABLE,
    home_option,
    json_option,
    main,
    resolve_config,
)
from pulse_transports.cli.ls import (
    fail,
    fmt_duration,
    fmt_number,
    fmt_progress,
    print_json,
)

if TYPE_CHECKING:
    from pulse_core.events import Event
    from pulse_transports.follow import LogFollower


def resolve_file(arg: str, home: Path | None) -> Path:
    """A path as given, or the log of a training id under *home* (exit 4 if neither)."""
    path = Path(arg)
    if path.exists():
        if path.is_dir():
            fail(
                f"{path} is a folder, not a regular file; give a run's log file"
                " (<home>/logs/training/<id>.jsonl)"
                " or a training id",
                EXIT_UNREADABLE,
            )
        if not path.is_file():
            fail(f"{path} is not a regular file", EXIT_UNREADABLE)
        return path
    from pulse_core.errors import InvalidTrainingId
    from pulse_core.events import validate_training_id
    from pulse_transports.file import log_path

    try:
        validate_training_id(arg)
    except InvalidTrainingId:
        fail(f"{path}: no such file", EXIT_UNREADABLE)
    candidate = log_path(resolve_config(home).home, arg)
    if not candidate.is_file():
        fail(f"{path}: no such file (nor {candidate})", EXIT_UNREADABLE)
    return candidate


def _home_of(path: Path, training_id: str, home: Path | None) -> Path | None:
    from pulse_transports.file import log_path

    if home is not None and log_path(home, training_id).resolve() == path.resolve():
        return home
    parent = path.resolve().parent
    if (
        parent.name == "training"
        and parent.parent.name == "logs"
        and path.name == f"{training_id}.jsonl"
    ):
        return parent.parent.parent
    return None


def replay_file(path: Path, home: Path | None, now: float) -> dict[str, Any]:
    """Fold *path* and return the ``--json`` document (raises OSError if unreadable)."""
    from pulse_core.projections import to_history_record, to_v1, to_view
    from pulse_core.reducer import replay_runs
    from pulse_transports.config import load_config
    from pulse_transports.follow import LogFollower
    from pulse_transports.liveness import check_writer, run_liveness

    if not path.is_file():
        raise IsADirectoryError(21, "not a regular file", str(path))
    with path.open("rb"):
        pass  # fail early and plainly if it cannot be read at all
    follower, events = _read(LogFollower(path, fast=True))
    # The common lines of the run were folded without event objects: the run's
    # first event and anything uncommon (another run's lines too) came back.
    count = len(events) + (follower.fast.folded if follower.fast else 0)
    ids = list(dict.fromkeys(e.training_id for e in events))
    if len(ids) > 1:  # several runs (logs concatenated): every event, folded per run
        follower, events = _read(LogFollower(path))
        count = len(events)
        states = replay_runs(events)
        runs = [states[i] for i in ids]
    else:
        runs = [follower.state] if events else []
    config = load_config(home=home)
    documents = []
    for state in runs:
        tid = state.training_id or ""
        where = _home_of(path, tid, home)
        writer = None
        if where is not None and not state.is_terminal:
            writer = check_writer(where, tid, state)
        liveness = run_liveness(state, now=now, writer=writer, **config.thresholds)
        at = state.last_event_at if liveness == "lost" and state.last_event_at else now
        documents.append(
            {
                "training_id": tid,
                "liveness": liveness,
                "view": to_view(state, now=at, liveness=liveness),
                "v1": to_v1(state, liveness=liveness),
                "history": to_history_record(state, liveness=liveness, now=at),
            }
        )
    return {
        "file": str(path),
        "lines": follower.lines + (1 if follower.pending else 0),
        "events": count,
        "bad_lines": follower.bad_lines,
        "blank_lines": follower.blank_lines,
        "bad": [{"line": b.line, "offset": b.offset, "reason": b.reason} for b in follower.bad],
        "runs": documents,
    }


def _read(follower: LogFollower) -> tuple[LogFollower, list[Event]]:
    """Read a whole file with *follower*: it and the events it returned."""
    try:
        return follower, [*follower.poll(), *follower.settle()]
    finally:
        follower.close()


def cloudevent_lines(data: bytes, source: str | None = None) -> tuple[list[bytes], int]:
    """Each decodable line of a log as a CloudEvents JSON line; and how many did not decode."""
    import orjson

    from pulse_core.codec import cloudevent_source, decode, to_cloudevent
    from pulse_core.errors import DecodeError
    from pulse_core.events import RunMeta

    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    events: list[Event] = []
    bad = 0
    for piece in pieces:
        try:
            events.append(decode(piece))
        except DecodeError:
            bad += 1
    producers: dict[str, str] = {}
    out = []
    for event in events:
        if isinstance(event, RunMeta):  # the producer of this run from here on
            producers[event.training_id] = cloudevent_source(event.host, event.pid)
        chosen = source or producers.get(event.training_id) or cloudevent_source(None, None)
        out.append(
            orjson.dumps(to_cloudevent(event, source=chosen), option=orjson.OPT_APPEND_NEWLINE)
        )
    return out, bad


@main.command("replay")
@click.argument("file", metavar="FILE|ID")
@json_option
@click.option(
    "--cloudevents",
    "as_cloudevents",
    is_flag=True,
    help="Print every event as a CloudEvents 1.0 JSON envelope, one per line.",
)
@click.option(
    "--source",
    default=None,
    metavar="URI-REF",
    help="CloudEvents source (default: /pulse/<host>/<pid> from the run's meta).",
)
@home_option
def replay_command(
    file: str, as_json: bool, as_cloudevents: bool, source: str | None, home: Path | None
) -> None:
    """Fold a log file (any file, or a run's log by ID) and print the state.

    Exits 0 for a readable log -- bad lines are skipped and listed -- and 4
    with a one-line reason when the file is not a regular readable file or
    holds no decodable event. A file with several training ids replays each.

    \b
    Examples:
      pulse replay ~/.pulse/logs/training/my-run.jsonl
      pulse replay my-run --home ~/.pulse
      pulse replay copy.jsonl --json | jq '.runs[0].v1'
      pulse replay my-run --home ~/.pulse --cloudevents > my-run.ce.jsonl
    """
    path = resolve_file(file, home)
    if as_cloudevents:
        try:
            data = path.read_bytes()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_UNREADABLE)
        lines, bad = cloudevent_lines(data, source)
        if not lines:
            fail(f"{path}: no decodable PULSE event ({bad} bad lines)", EXIT_UNREADABLE)
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.buffer.flush()
        if bad:
            click.echo(f"{path}: {bad} lines did not decode and were skipped", err=True)
        return

    try:
        document = replay_file(path, home, time.time())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_UNREADABLE)
    if not document["runs"]:
        fail(
            f"{path}: no decodable PULSE event in {document['lines']} lines "
            f"({document['bad_lines']} bad)",
            EXIT_UNREADABLE,
        )
    if as_json:
        print_json(document)
        return
    for run in document["runs"]:
        view = run["view"]
        progress = view["progress"]
        epochs = f"epoch {progress['epoch']}/{progress['total_epochs'] or '?'}"
        click.echo(
            f"{run['training_id']}: {view['status']} ({run['liveness']})  "
            f"{fmt_progress(progress['fraction'])} {epochs}  "
            f"loss {fmt_number(view['metrics'].get('loss'))}  "
            f"duration {fmt_duration(view['timings']['duration'])}"
        )
        if view["message"]:
            click.echo(f"  message: {view['message']}")
        if view["last_error"]:
            error = view["last_error"]
            click.echo(f"  error: {error['error_code']}: {error['message']}")
        if view["anomaly_count"]:
            click.echo(f"  anomalies: {view['anomaly_count']}")
        click.echo(f"  v1: {json.dumps(run['v1'], ensure_ascii=False)}")
    click.echo(
        f"{path}: {document['lines']} lines, {document['events']} events, "
        f"{document['bad_lines']} bad, {document['blank_lines']} blank"
    )
    for bad in document["bad"]:
        click.echo(f"  line {bad['line']} (offset {bad['offset']}): {bad['reason']}")
