"""The ``pulse show`` document and its lines, without click or rich.

This module owns what ``show`` prints: :func:`run_document` (the ``--json``
object of a recovered run), :func:`show_lines` (the human view as rich markup
lines, every text from the log passed through an escape function) and
:func:`plain_text` (those lines as rich prints them to a pipe, or ``None``
when only rich can say how). :mod:`pulse_transports.cli.show` prints the
lines with rich; the fast ``pulse show`` (:mod:`pulse_transports.cli._fast`)
writes :func:`plain_text` when it applies, so both print the same bytes.

Must import nothing heavier than the standard library at import time
(:mod:`pulse_core.projections` when a document is built).
"""

from __future__ import annotations

import re

from pulse_transports.cli._table import fmt_duration, fmt_flow, fmt_number, fmt_progress, fmt_time

TYPE_CHECKING = False  # not typing's: see pulse_transports.cli
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SPARK = "▁▂▃▄▅▆▇█"
#: rich styles of a liveness and a status in the human views.
LIVENESS_STYLE = {"alive": "green", "stale": "yellow", "lost": "red", "ended": "dim"}
STATUS_STYLE = {
    "running": "bold green",
    "preparing": "cyan",
    "cooling_down": "cyan",
    "done": "green",
    "error": "bold red",
    "cancelled": "yellow",
    "idle": "dim",
}
#: The markup tags :func:`show_lines` writes (the log's text never holds a ``[``).
_TAG = re.compile(r"\[/?[a-z ]*\]")
#: A ``[`` after an even run of backslashes (none included): one rich reads as markup.
_BARE_OPEN = re.compile(r"(?<!\\)((?:\\\\)*)\[")


def markup_escape(value: Any) -> str:
    """*value* as rich markup that prints it as it is, whatever stands next to it.

    rich's ``escape`` escapes only a ``[`` that starts a tag within *value*;
    two values printed side by side (a detail's key and its value, ``][/``
    and ``: ][/``) could still make one and stop the print with a
    ``MarkupError``. Here every ``[`` is escaped.
    """
    from rich.markup import escape

    return _BARE_OPEN.sub(r"\1\\[", escape(str(value)))


#: rich's emoji code pattern (``rich._emoji_replace``): ``:name:`` becomes an emoji.
_EMOJI_CODE = re.compile(r"(:(\S*?)(?:(?:\-)(emoji|text))?:)")


class NeedsRich(Exception):
    """A text that rich would print differently from its characters (markup, emoji, controls)."""


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


def seq_gaps(skipped: int, bad_lines: int) -> dict[str, int]:
    """Split the log's skipped seq numbers into ``coalesced`` (normal) and ``missing``.

    See :mod:`pulse_transports.cli.show`: only an unreadable line can hide a lost event.
    """
    missing = max(0, min(skipped, bad_lines))
    return {"coalesced": max(0, skipped - missing), "missing": missing}


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


def plain_text(doc: dict[str, Any]) -> str | None:
    """The human view as rich prints it to a pipe (no colour); ``None`` if rich must print it.

    Exact when every text from the log is printable and holds no ``[`` or
    backslash (markup), and no line has an emoji code: then rich prints each
    line's characters with its tags removed (checked against rich in
    tests/transports/test_fast_show.py).
    """
    try:
        lines = show_lines(doc, _plain)
    except NeedsRich:
        return None
    out = []
    for line in lines:
        if "[]" in line:
            return None  # a status without a style: rich's markup error
        segments = _TAG.split(line)
        for segment in segments:
            for match in _EMOJI_CODE.finditer(segment):
                name = match.group(2)
                if not (name.isdigit() and len(name) <= 2):  # a time's minutes: no emoji
                    return None
        out.append("".join(segments))
    return "\n".join(out) + "\n"


def _plain(value: Any) -> str:
    text = str(value)
    if not text.isprintable() or "[" in text or "\\" in text:
        raise NeedsRich(text)
    return text


def show_lines(doc: dict[str, Any], esc: Callable[[Any], str]) -> list[str]:
    """The human view of a ``show`` document as rich markup, one string a print.

    Everything from the log (ids, names, messages, error codes, details,
    metric names, anomaly details) is untrusted text: it goes through *esc*
    (rich's ``escape``), never read as markup (gloo's errors contain ``[...]``).
    """
    view = doc["view"]
    lines: list[str] = []
    out = lines.append
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
    return lines
