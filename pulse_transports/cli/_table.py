"""The ``pulse ls`` table and the small formatters the run-reading commands share.

This module owns turning ``ls`` rows into output without click or rich, so
the fast ``pulse ls`` (:mod:`pulse_transports.cli._fast`) and the click
command print the same bytes: :func:`render_table` (an aligned table,
coloured only on a terminal, with the ANSI codes of ``click.style``),
:func:`print_json`, :func:`select_rows` and the ``fmt_*`` helpers.
:mod:`pulse_transports.cli.ls` re-exports them for the other commands.

Must import nothing heavier than the standard library (``orjson`` when JSON
is printed).
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime

TYPE_CHECKING = False  # not typing's: see pulse_transports.cli
if TYPE_CHECKING:
    from typing import Any

#: What ``pulse ls --status`` accepts: a status or a liveness.
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
STATUS_COLOR = {"running": "green", "done": "green", "error": "red", "cancelled": "yellow"}
LIVENESS_COLOR = {"alive": "green", "stale": "yellow", "lost": "red"}
#: ``click.style``'s foreground codes for the colours above.
_ANSI_FG = {"red": 31, "green": 32, "yellow": 33}


def style(text: str, fg: str | None = None, bold: bool = False) -> str:
    """*text* in ANSI colour and/or bold, byte for byte what ``click.style`` writes."""
    start = f"\033[{_ANSI_FG[fg]}m" if fg else ""
    if bold:
        start += "\033[1m"
    return f"{start}{text}\033[0m"


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


def render_table(rows: list[dict[str, Any]], home: object) -> None:
    """Print ``ls`` rows as an aligned table (colour only on a terminal).

    Written by hand rather than with rich's Table: a thousand rows render in
    milliseconds instead of most of a second. On a terminal the table fits
    its width (:func:`fit_table`); piped, lines are complete and uncoloured.
    """
    if not rows:
        sys.stdout.write(f"no runs under {home}\n")
        sys.stdout.flush()
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
        import shutil  # here: only a terminal needs its width

        header, cells, gap = fit_table(header, cells, shutil.get_terminal_size().columns)
    widths = [max(map(len, column)) for column in zip(header, *cells, strict=True)]
    if not color:  # one format for every line: a thousand rows in a few milliseconds
        line = gap.join(f"{{:<{w}}}" for w in widths).format
        out = [line(*header).rstrip()]
        out.extend(line(*cell).rstrip() for cell in cells)
    else:
        out = [
            style(
                gap.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
                bold=True,
            )
        ]
        for cell in cells:
            out.append(
                gap.join(
                    _paint(t, i, w) for i, (t, w) in enumerate(zip(cell, widths, strict=True))
                ).rstrip()
            )
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def _paint(text: str, column: int, width: int) -> str:
    """One terminal cell: padded, a status (column 1) or liveness (2) in its colour."""
    padded = text.ljust(width)
    colour = (STATUS_COLOR if column == 1 else LIVENESS_COLOR if column == 2 else {}).get(text)
    return style(padded, fg=colour) if colour else padded
