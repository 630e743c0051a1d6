"""``pulse validate FILE``: check a log line by line against the schema and the protocol.

This module owns the ``validate`` command. Each line is checked against
``event.schema.json`` (loaded at run time by :mod:`pulse_transports.schema`
from ``specs/schema``) and decoded with :func:`pulse_core.codec.decode`;
then the protocol rules are checked over the file: every line has the
training_id of the first event, seq is strictly increasing, status changes
are legal (:func:`pulse_core.lifecycle.next_status`) and nothing but
heartbeats follows a terminal status. Blank lines are warnings (writers leave
one after a failed write; readers skip them); everything else is an error.

``pulse validate FILE --json`` prints one JSON object (keys sorted)::

    {
      "file": str,
      "valid": bool,                 # no errors
      "lines": int,                  # lines read (a last line without newline counts)
      "events": int,                 # lines that decoded as events
      "error_count": int, "warning_count": int,
      "errors": [{"line": int, "kind": str, "message": str}],    # first --max-errors
      "warnings": [{"line": int, "kind": str, "message": str}]   # first --max-errors
    }

Error kinds: ``not_json``, ``schema``, ``decode``, ``too_long``,
``training_id``, ``seq``, ``transition``, ``after_terminal``; warning kind:
``blank``. Exit status: 0 valid, 1 errors found, 4 the file cannot be read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from pulse_transports.cli._common import (
    EXIT_FAILED,
    EXIT_UNREADABLE,
    home_option,
    json_option,
    main,
)
from pulse_transports.cli.ls import fail, print_json
from pulse_transports.cli.replay import resolve_file

MAX_LINE = 1 << 20


def read_lines(handle: BinaryIO, max_line: int = MAX_LINE) -> Iterator[bytes | None]:
    """Yield each line without its newline; None for a line over *max_line* bytes.

    Memory stays bounded by *max_line*: an over-long line is skipped unread.
    """
    while True:
        line = handle.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = handle.readline(1 << 16)
            yield None
            continue
        yield line.rstrip(b"\r\n") if line.endswith(b"\n") else line


def explain(error: Any) -> str:
    """One line naming what a jsonschema error is about.

    For the schema's ``oneOf`` over event types, report the errors of the
    branch whose ``type`` matched instead of "not valid under any".
    """
    if error.validator == "oneOf" and error.context:
        branches: dict[Any, list[Any]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        matching = [
            subs
            for subs in branches.values()
            if not any(list(s.path) == ["type"] and s.validator == "const" for s in subs)
        ]
        if matching:
            return "; ".join(_where(s) for s in min(matching, key=len))
    return _where(error)


def _where(error: Any) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    message = str(error.message)
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{path}: {message}" if path else message


class Checker:
    """The protocol rules over a file's events, in order."""

    def __init__(self) -> None:
        self.training_id: str | None = None
        self.last_seq = 0
        self.status = "idle"

    def check(self, event: Any) -> list[tuple[str, str]]:
        """Return ``(kind, message)`` problems of the next event."""
        from pulse_core.events import Heartbeat, StateCheckpoint, StatusChanged, UnknownEvent
        from pulse_core.lifecycle import is_terminal, next_status

        problems: list[tuple[str, str]] = []
        if isinstance(event, StateCheckpoint):
            return problems  # the fold so far (its seq is the last one folded), not an event
        if self.training_id is None:
            self.training_id = event.training_id
        elif event.training_id != self.training_id:
            problems.append(
                (
                    "training_id",
                    f"training_id {event.training_id!r} differs from the file's "
                    f"{self.training_id!r}",
                )
            )
            return problems
        if event.seq <= self.last_seq:
            problems.append(
                ("seq", f"seq {event.seq} is not above the previous seq {self.last_seq}")
            )
        else:
            self.last_seq = event.seq
        if is_terminal(self.status) and not isinstance(event, Heartbeat | UnknownEvent):
            problems.append(
                ("after_terminal", f"{type(event).__name__} event after status {self.status}")
            )
        elif isinstance(event, StatusChanged):
            if next_status(self.status, event.status) is None:
                problems.append(
                    ("transition", f"illegal transition {self.status} -> {event.status}")
                )
            else:
                self.status = event.status
        return problems


def validate_file(path: Path, max_errors: int = 100) -> dict[str, Any]:
    """Validate a log file; return the ``--json`` document.

    Raises:
        OSError: if the file cannot be opened or read.
    """
    import orjson

    from pulse_core.codec import from_dict
    from pulse_core.errors import DecodeError
    from pulse_transports.schema import validator

    schema = validator("event")
    checker = Checker()
    errors: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    counts = {"errors": 0, "warnings": 0, "lines": 0, "events": 0}

    def report(target: list[dict[str, Any]], key: str, line: int, kind: str, text: str) -> None:
        counts[key] += 1
        if len(target) < max_errors:
            target.append({"line": line, "kind": kind, "message": text})

    with path.open("rb") as handle:
        for number, raw in enumerate(read_lines(handle), start=1):
            counts["lines"] = number
            if raw is None:
                report(errors, "errors", number, "too_long", f"line longer than {MAX_LINE} bytes")
                continue
            if not raw.strip():
                report(warnings, "warnings", number, "blank", "empty line")
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                report(errors, "errors", number, "not_json", f"not valid JSON: {exc}")
                continue
            schema_errors = list(schema.iter_errors(obj))
            if schema_errors:
                # One error per line: the distinct reasons, joined.
                if not isinstance(obj, dict):
                    reasons = [f"an event must be a JSON object, got {type(obj).__name__}"]
                else:
                    reasons = list(dict.fromkeys(explain(e) for e in schema_errors))
                report(errors, "errors", number, "schema", "; ".join(reasons[:4]))
            try:
                event = from_dict(obj, raw)
            except DecodeError as exc:
                if not schema_errors:
                    report(errors, "errors", number, "decode", str(exc))
                continue
            counts["events"] += 1
            for kind, text in checker.check(event):
                report(errors, "errors", number, kind, text)
    return {
        "file": str(path),
        "valid": counts["errors"] == 0,
        "lines": counts["lines"],
        "events": counts["events"],
        "error_count": counts["errors"],
        "warning_count": counts["warnings"],
        "errors": errors,
        "warnings": warnings,
    }


@main.command("validate")
@click.argument("file", metavar="FILE|ID")
@json_option
@click.option(
    "--max-errors",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="List at most this many errors (all are counted).",
)
@home_option
def validate_command(file: str, as_json: bool, max_errors: int, home: Path | None) -> None:
    """Check every line of a log against the event schema and the protocol rules.

    FILE is a path, or a training id whose log is under --home. Reports
    FILE:LINE: problems; exits 0 if the log is valid, 1 if not, 4 if it
    cannot be read.

    \b
    Examples:
      pulse validate run.jsonl
      pulse validate 20261129-013724-123-9f2c41d07b --home ~/.pulse
      pulse validate run.jsonl --json | jq '.errors[] | .line'
    """
    from pulse_transports.schema import SchemaNotFound

    path = resolve_file(file, home)
    try:
        document = validate_file(path, max_errors=max_errors)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_UNREADABLE)
    except SchemaNotFound as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        print_json(document)
    else:
        for item in document["errors"]:
            click.echo(f"{path}:{item['line']}: error: {item['kind']}: {item['message']}")
        for item in document["warnings"]:
            click.echo(f"{path}:{item['line']}: warning: {item['kind']}: {item['message']}")
        hidden = document["error_count"] - len(document["errors"])
        if hidden > 0:
            click.echo(f"... and {hidden} more errors")
        verdict = "valid" if document["valid"] else "INVALID"
        click.echo(
            f"{path}: {verdict}: {document['lines']} lines, {document['events']} events, "
            f"{document['error_count']} errors, {document['warning_count']} warnings"
        )
    if not document["valid"]:
        raise SystemExit(EXIT_FAILED)
