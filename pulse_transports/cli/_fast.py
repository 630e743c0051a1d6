"""``pulse ls`` and ``pulse show ID`` without click: the common cases, from the index.

This module owns the fast path of the ``pulse`` script (:func:`fast`).
It handles ``pulse [--home H] ls`` with ``--json``, ``--status``,
``--flow-run-id``, ``--limit``, ``--home`` and ``--source file``, and
``pulse [--home H] show ID`` with ``--json``, ``--home`` and ``--source
file``, and only when its answer is the click command's, byte for byte: the
home is a folder, the configuration resolves (by
:func:`pulse_transports.configfile.resolve`, the rules ``load_config``
applies), there is no v1 snapshot to heal, and the index
(:mod:`pulse_transports.index`) is of this code's state format (for ``ls``:
with a row for each log and none for a deleted one).

``ls``: ended runs whose log is unchanged since their row was written are
printed from the row's stored ``ls`` summary, without decoding any state; the
few others (live runs, grown logs) are read through
:func:`pulse_transports.history.load_run`, so their liveness is judged as
``pulse ls`` always does (writer lock, pid, silence). ``show``: an ended,
unchanged run's state is decoded from its row (:mod:`pulse_core.statecodec`,
no history), any other run is read through ``load_run``; the document and
lines are :mod:`pulse_transports.cli._detail`'s, printed without rich only
to a pipe and when rich would print the text as it is
(:func:`~pulse_transports.cli._detail.plain_text`). Anything else -- help,
an unknown or malformed option, ``-v``, another source, an error to report,
many changed logs, a terminal or ``FORCE_COLOR`` for ``show`` -- returns
``None`` before any output, and the click command runs as before.

Imports only the standard library (``tomllib`` where a configuration file
is read, ``orjson`` for JSON) for ``ls``; ``show`` adds the core's state
codec and projections.
"""

from __future__ import annotations

import os
import sys

from pulse_transports.cli._table import STATUS_CHOICES, print_json, render_table, select_rows
from pulse_transports.configfile import path_str, resolve

TYPE_CHECKING = False  # not typing's: see pulse_transports.cli
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable
    from typing import Any, Final, TypeVar

    _T = TypeVar("_T")

#: :data:`pulse_core.statecodec.STATE_FORMAT`, named here so the fast path skips the core
#: (tests/transports/test_fast_ls.py checks they agree).
STATE_FORMAT: Final = (
    "2:training_id,status,message,meta,epoch,total_epochs,step,total_steps,metrics,best_loss,"
    "metrics_min,metrics_max,metrics_dropped,history,errors,error_count,timeline,"
    "timeline_count,status_durations,created_at,started_at,finished_at,status_since,"
    "last_event_at,last_seq,event_count,duplicates,missing,gaps,anomalies,anomaly_count,"
    "unknown_events,dropped"
)
#: :data:`pulse_transports.v1.V1_FILE`, named here so a home without one skips that import
#: (tests/transports/test_fast_start.py checks they agree); ``ls`` heals it when present.
V1_FILE_NAME: Final = "training_status.json"
#: Changed logs read one by one; with more, the whole ``pulse ls`` is cheaper.
MAX_CHANGED: Final = 16

_ID_FIRST: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS: Final = _ID_FIRST | frozenset("._-")
_VALUED: Final = frozenset({"--home", "--status", "--flow-run-id", "--limit", "--source"})
_SHOW_VALUED: Final = frozenset({"--home", "--source"})
#: Variables that make rich colour a pipe (``rich.console.Console``): then rich prints ``show``.
_RICH_ENV: Final = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
_SELECT: Final = (
    "SELECT training_id, inode, device, size, mtime_ns, terminal, sort_key, summary FROM runs"
)
_SHOW_SELECT: Final = (
    "SELECT inode, device, size, mtime_ns, terminal, bad_lines, position, state FROM runs"
    " WHERE training_id = ?"
)


class _Settings:
    """What ``pulse ls`` needs of the configuration."""

    __slots__ = ("home", "lost_after", "stale_after", "v1_path")

    def __init__(
        self, home: str, v1_path: str | None, stale_after: float, lost_after: float
    ) -> None:
        self.home = home
        self.v1_path = v1_path
        self.stale_after = stale_after
        self.lost_after = lost_after


def parse(argv: list[str], command: str = "ls") -> dict[str, Any] | None:
    """The options of ``[--home H] ls [options]`` (or ``show ID [options]``); else ``None``."""
    args: dict[str, Any] = {
        "json": False,
        "status": None,
        "flow_run_id": None,
        "limit": None,
        "id": None,
    }
    valued = _VALUED if command == "ls" else _SHOW_VALUED
    homes: dict[bool, str] = {}  # the group's (False) and the command's (True) --home
    seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not seen and arg == command:
            seen = True
            continue
        if arg == "--json" and seen:
            args["json"] = True
            continue
        if seen and command == "show" and args["id"] is None and not arg.startswith("-"):
            args["id"] = arg
            continue
        name, eq, value = arg.partition("=")
        if name not in valued or (not seen and name != "--home"):
            return None
        if not eq:
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        if not value or value.startswith("-"):
            return None
        if name == "--home":
            homes[seen] = value
        elif name == "--status":
            if value not in STATUS_CHOICES:
                return None
            args["status"] = value
        elif name == "--flow-run-id":
            args["flow_run_id"] = value
        elif name == "--limit":
            if not (value.isascii() and value.isdigit()) or value[0] == "0":
                return None
            args["limit"] = int(value)
        elif value != "file":  # --source
            return None
    args["home"] = homes.get(True, homes.get(False))
    return args if seen else None


def join(base: str, name: str) -> str:
    """``str(PurePosixPath(base) / name)`` for a normalised *base* and a plain *name*."""
    if base == ".":
        return name
    return base + name if base.endswith("/") else f"{base}/{name}"


def settings(home: str | None) -> _Settings | None:
    """The home and thresholds as :func:`~pulse_transports.config.load_config` resolves them.

    ``None`` when the configuration cannot be resolved: the click command reports why.
    """
    try:
        values = resolve(None if home is None else path_str(home))
    except Exception:  # noqa: BLE001 - any failure is the full command's to report
        return None
    option = (values["transport_options"].get("v1") or {}).get("path")
    return _Settings(
        values["home"],
        str(option) if option else None,
        values["stale_after"],
        values["lost_after"],
    )


def valid_id(text: str) -> bool:
    """:func:`pulse_core.events.validate_training_id`'s rule, without importing the core."""
    return 0 < len(text) <= 128 and text[0] in _ID_FIRST and _ID_CHARS.issuperset(text)


def _connect(home: str) -> Any:
    """The index, read-only (:mod:`sqlite3` errors raised)."""
    import sqlite3

    path = join(home, "index.sqlite")
    uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return sqlite3.connect(uri + "?mode=ro", uri=True, timeout=2.0)


def _read_index(home: str, query: Callable[[sqlite3.Connection], _T]) -> _T | None:
    """*query* on the home's index if it is of this state format, else ``None``."""
    import sqlite3

    try:
        db = _connect(home)
        try:
            found = db.execute("SELECT value FROM info WHERE key = 'format'").fetchone()
            if found is None or found[0] != STATE_FORMAT:
                return None
            return query(db)
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _index_rows(home: str) -> dict[str, tuple[Any, ...]] | None:
    return _read_index(home, lambda db: {row[0]: row for row in db.execute(_SELECT)})


def _scan(folder: str) -> dict[str, os.stat_result] | None:
    found: dict[str, os.stat_result] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    except OSError:
        return None
    for entry in entries:
        name = entry.name
        if not name.endswith(".jsonl"):
            continue
        tid = name[:-6]
        if not valid_id(tid):
            continue
        try:
            if entry.is_file():
                found[tid] = entry.stat()
        except OSError:
            continue
    return found


def _has_v1(cfg: _Settings) -> bool:
    """Whether the home has a v1 snapshot: the full command heals it (``ls.heal_v1``)."""
    return os.path.exists(os.path.join(cfg.home, cfg.v1_path or V1_FILE_NAME))


def read_rows(cfg: _Settings, as_json: bool = False) -> list[dict[str, Any]] | None:
    """Every run's ``ls`` row, newest first; ``None`` when the full command must answer."""
    if _has_v1(cfg):
        return None
    folder = join(cfg.home, "logs/training")
    found = _scan(folder)
    if found is None:
        return None
    if not found:
        return [] if not os.path.exists(join(cfg.home, "index.sqlite")) else None
    rows = _index_rows(cfg.home)
    if rows is None or any(tid not in found for tid in rows):
        return None
    if as_json:  # printed by orjson: read by it too
        import orjson as decoder
    else:  # stdlib json imports in a fifth of orjson's time
        import json as decoder  # type: ignore[no-redef]
    loads = decoder.loads

    ended: list[tuple[Any, ...]] = []
    changed: list[str] = []
    for tid, st in found.items():
        row = rows.get(tid)
        if (
            row is None
            or not row[5]
            or (row[1], row[2], row[3], row[4])
            != (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        ):
            changed.append(tid)
            continue
        ended.append(row)
    if len(changed) > MAX_CHANGED:
        return None
    # One decode of all stored summaries (a third cheaper than one call a row).
    try:
        summaries = loads("[" + ",".join(row[7] for row in ended) + "]")
    except ValueError:
        return None  # an unreadable row: the full command folds that log again
    if len(summaries) != len(ended) or not all(type(s) is dict for s in summaries):
        return None
    keyed: list[tuple[float, str, dict[str, Any]]] = []
    for row, summary in zip(ended, summaries, strict=True):
        summary["log"] = join(folder, f"{row[0]}.jsonl")
        keyed.append((row[6], row[0], summary))
    if changed:
        keyed.extend(_changed(cfg, changed))
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [summary for _key, _tid, summary in keyed]


def _changed(cfg: _Settings, ids: list[str]) -> list[tuple[float, str, dict[str, Any]]]:
    """Live or changed runs, read and judged as :func:`~pulse_transports.history.recover` does."""
    import time

    from pulse_core.errors import RunNotFound
    from pulse_transports.cli._logsetup import configure_logging
    from pulse_transports.history import load_run

    configure_logging(False)
    now = time.time()
    out = []
    for tid in ids:
        try:
            record = load_run(
                cfg.home, tid, now=now, stale_after=cfg.stale_after, lost_after=cfg.lost_after
            )
        except RunNotFound:
            continue  # removed since the scan
        out.append((record.sort_key, tid, record.summary))
    return out


def fast(argv: list[str]) -> int | None:
    """Run ``pulse ls`` or ``pulse show ID`` if it is a common case; ``None`` if click must."""
    command = next((arg for arg in argv if arg in ("ls", "show")), None)
    return fast_show(argv) if command == "show" else fast_ls(argv)


def fast_ls(argv: list[str]) -> int | None:
    """Run ``pulse ls`` from *argv* if it is the common case; ``None`` if click must."""
    return _guarded(_fast_ls, argv)


def fast_show(argv: list[str]) -> int | None:
    """Run ``pulse show ID`` from *argv* if it is the common case; ``None`` if click must."""
    return _guarded(_fast_show, argv)


def _guarded(
    command: Callable[[list[str]], Callable[[], None] | None], argv: list[str]
) -> int | None:
    """Run *command*'s answer (its printer), ending as click ends on Ctrl-C and a closed pipe."""
    try:
        printer = command(argv)
        if printer is None:
            return None
        printer()
    except KeyboardInterrupt:  # as click reports it
        sys.stderr.write("\nAborted!\n")
        return 1
    except BrokenPipeError:
        # As click does: no traceback, exit 1, and nothing more written to the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


def _fast_ls(argv: list[str]) -> Callable[[], None] | None:
    args = parse(argv)
    if args is None:
        return None
    cfg = settings(args["home"])
    if cfg is None or not os.path.isdir(cfg.home):
        return None
    found = read_rows(cfg, args["json"])
    if found is None:
        return None
    rows = select_rows(found, args["status"], args["flow_run_id"], args["limit"])
    if args["json"]:
        return lambda: print_json({"home": cfg.home, "runs": rows})
    return lambda: render_table(rows, cfg.home)


class _Record:
    """The part of :class:`~pulse_transports.history.RunRecord` a ``show`` document reads."""

    __slots__ = (
        "bad_lines",
        "liveness",
        "offset",
        "path",
        "position",
        "state",
        "training_id",
        "writer",
    )

    def __init__(self, training_id: str, path: str, bad_lines: int, offset: int, state: Any):
        self.training_id = training_id
        self.path = path
        self.liveness = "ended"
        self.writer = None
        self.bad_lines = bad_lines
        self.position = self  # record.position.offset
        self.offset = offset
        self.state = state


def _fast_show(argv: list[str]) -> Callable[[], None] | None:
    args = parse(argv, "show")
    if args is None or args["id"] is None or not valid_id(args["id"]):
        return None
    as_json = args["json"]
    if not as_json and (
        sys.stdout.isatty()
        or any(name in os.environ for name in _RICH_ENV)
        or (sys.stdout.encoding or "").lower().replace("-", "") != "utf8"
    ):
        return None  # rich colours a terminal or encodes for it: it prints
    cfg = settings(args["home"])
    if cfg is None or not os.path.isdir(cfg.home):
        return None
    if _has_v1(cfg):
        return None
    record = _show_record(cfg, args["id"])
    if record is None:
        return None
    import time

    from pulse_transports.cli._detail import plain_text, run_document

    document = run_document(record, time.time())
    if as_json:
        return lambda: print_json(document)
    text = plain_text({**document, "now": time.time()})
    if text is None:
        return None
    return lambda: _write(text)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _show_record(cfg: _Settings, tid: str) -> Any:
    """One run for ``show``: an ended run from its index row, any other through history.

    ``None`` when the click command must answer (no such run, an unreadable row).
    """
    path = join(join(cfg.home, "logs/training"), f"{tid}.jsonl")
    try:
        st = os.stat(path)
    except OSError:
        return None  # "no run": the command's error
    row = _index_row(cfg.home, tid)
    if row is not None and row[4] and row[:4] == (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns):
        import orjson

        from pulse_core.statecodec import decode_state

        try:
            position = orjson.loads(row[6])
            # Position.from_dict(...).offset: every field has a default.
            offset = position.get("offset", 0)
            return _Record(tid, path, row[5], offset, decode_state(row[7]))
        except Exception:  # noqa: BLE001 - the full command reports or rebuilds it
            return None
    from pulse_core.errors import PulseError
    from pulse_transports.cli._logsetup import configure_logging
    from pulse_transports.history import load_run

    configure_logging(False)
    try:
        return load_run(cfg.home, tid, stale_after=cfg.stale_after, lost_after=cfg.lost_after)
    except PulseError:
        return None


def _index_row(home: str, tid: str) -> tuple[Any, ...] | None:
    """The index row of *tid* if the index is of this state format, else ``None``."""
    row: tuple[Any, ...] | None = _read_index(
        home, lambda db: db.execute(_SHOW_SELECT, (tid,)).fetchone()
    )
    return row
