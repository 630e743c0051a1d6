"""Restart recovery: the last known state of every run, fast, from a rebuildable index.

This module owns what a reader knows about all runs of a home at once:

* :func:`recover` -- one call returning a :class:`RunRecord` per run log
  (active runs and finished ones), each with an honest liveness, newest
  first. It is what the TrainingPanel calls when it reopens.
* :func:`load_run` -- the same for one training id.
* through the index (:class:`~pulse_transports.index.RunIndex`, a cache
  in ``<home>/index.sqlite``): a row is used as is only when the log's
  identity is unchanged. A log that only grew (same inode, larger, and the
  64 bytes before the stored offset unchanged) is continued from the stored
  offset and state; any other disagreement (new inode after a compaction, a
  shorter or rewritten file) rebuilds the row from the whole log. Rows of
  deleted logs are removed. When the index cannot be written (read-only
  home, locked) recovery still answers, from the logs.
* without a usable index row, a log is folded from its own last
  ``checkpoint`` line (:mod:`pulse_transports._checkpoint`), so cold
  recovery reads only each log's tail.
* :func:`checkpoint_to_bytes`/:func:`checkpoint_from_bytes` -- a follower's
  place and state, stored.

Owner: a log's file name is its run's id. Folds start from a state owned by
that id, so a line of another run -- even the first -- is a ``foreign_event``
anomaly and never makes ``ls``/``show`` report the other run.

Liveness is :mod:`pulse_transports.liveness`'s (the writer's lock, then its
pid, then silence).

Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.errors import PulseError, RunNotFound
from pulse_core.events import validate_training_id
from pulse_core.liveness import ENDED, LOST, LOST_AFTER, STALE_AFTER, Liveness
from pulse_core.projections import to_summary
from pulse_core.state import RunState
from pulse_core.statecodec import STATE_FORMAT, decode_state, encode_state, state_from_obj
from pulse_transports._logfile import log_dir, log_path, run_file
from pulse_transports.index import IndexRow, RunIndex
from pulse_transports.liveness import check_writer, run_liveness

if TYPE_CHECKING:
    from pulse_transports.position import Checkpoint, Position

# Folding a log (follow, _checkpoint, the reducer) and positions are imported where
# used: a warm ``pulse ls`` reads only the index and pays none of them (issue 19).

log = get_logger("pulse.history")

LOG_SUFFIX: Final = ".jsonl"
#: Index rows written per transaction while folding: what a pass over many new
#: logs holds at once (a hub's retention pass over 1,000 new runs) stays small.
WRITE_BATCH: Final = 64


class HomeNotFound(PulseError):
    """The PULSE home folder does not exist."""


# -- checkpoints ---------------------------------------------------------------------


def checkpoint_to_bytes(checkpoint: Checkpoint) -> bytes:
    """Serialise a follower checkpoint (position and state) as JSON."""
    return orjson.dumps(
        {
            "format": STATE_FORMAT,
            "position": checkpoint.position.to_dict(),
            "state": orjson.Fragment(encode_state(checkpoint.state)),
        }
    )


def checkpoint_from_bytes(data: bytes) -> Checkpoint:
    """Read a checkpoint written by :func:`checkpoint_to_bytes`.

    Raises:
        ValueError: if *data* is not such a checkpoint (or of another format).
    """
    from pulse_transports.position import Checkpoint, Position

    try:
        obj = orjson.loads(data)
        if obj.get("format") != STATE_FORMAT:
            raise ValueError("written by another version")
        return Checkpoint(Position.from_dict(obj["position"]), state_from_obj(obj["state"]))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a PULSE follower checkpoint: {exc}") from None


# -- summaries ---------------------------------------------------------------------


def summarize(
    state: RunState, *, liveness: Liveness, now: float, path: Path | str
) -> dict[str, Any]:
    """The ``pulse ls`` row of a run read from the log at *path*.

    :func:`pulse_core.projections.to_summary` plus ``log``; the run's id
    is the log's file name while the state has none.
    """
    name = os.path.basename(path)
    summary = to_summary(state, liveness=liveness, now=now, training_id=name[: -len(LOG_SUFFIX)])
    summary["log"] = os.fspath(path)
    return summary


@attrs.define(eq=False)
class RunRecord:
    """What recovery knows about one run.

    Attributes:
        training_id: the run's id (its log's file name).
        log: the log file, a ``str``: recovery, which the hub runs over every
            run again and again, makes no per-run ``Path`` (pathlib interns
            the parts it parses); :attr:`path` makes one when asked.
        liveness: alive, stale, lost or ended, as of recovery.
        writer: the writer check (True/False/None), None for ended runs.
        summary: the ``ls`` row (JSON-ready; includes liveness).
        bad_lines: lines of the log that are not decodable events.
        sort_key: newest first by this (the run's first event time).
    """

    training_id: str
    log: str
    liveness: Liveness
    writer: bool | None
    summary: dict[str, Any]
    bad_lines: int
    sort_key: float
    _state: RunState | None = None
    _state_json: bytes | None = None
    _position: Position | None = None
    _position_json: str | None = None

    @property
    def path(self) -> Path:
        """The log file."""
        return Path(self.log)

    @property
    def position(self) -> Position:
        """Where reading the log stopped (to follow it on from there)."""
        if self._position is None:
            assert self._position_json is not None
            from pulse_transports.position import Position

            self._position = Position.from_dict(orjson.loads(self._position_json))
        return self._position

    @property
    def state(self) -> RunState:
        """The run's folded state (decoded from the index on first use)."""
        if self._state is None:
            assert self._state_json is not None
            self._state = decode_state(self._state_json)
        return self._state

    @property
    def terminal(self) -> bool:
        """True once the run is done, error or cancelled."""
        return self.liveness == ENDED

    def checkpoint(self) -> Checkpoint:
        """Where recovery stopped reading, to follow the log on from there."""
        from pulse_transports.position import Checkpoint

        return Checkpoint(self.position, self.state)


# -- recovery ----------------------------------------------------------------------


@attrs.frozen
class _Settings:
    home: Path
    folder: Path
    now: float
    stale_after: float
    lost_after: float


def _scan(folder: Path) -> dict[str, os.stat_result]:
    found: dict[str, os.stat_result] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for entry in entries:
        name = entry.name
        if not name.endswith(LOG_SUFFIX):
            continue
        tid = name[: -len(LOG_SUFFIX)]
        try:
            validate_training_id(tid)
            if entry.is_file():
                found[tid] = entry.stat()
        except (PulseError, OSError):
            continue
    return found


def _same_file(row: IndexRow, st: os.stat_result) -> bool:
    return (row.inode, row.device, row.size, row.mtime_ns) == (
        st.st_ino,
        st.st_dev,
        st.st_size,
        st.st_mtime_ns,
    )


def _fold(
    tid: str, st: os.stat_result, row: IndexRow | None, cfg: _Settings
) -> tuple[RunRecord, IndexRow]:
    """Read a log (continuing a row whose file only grew) into a record and a row."""
    from pulse_transports._checkpoint import last_checkpoint
    from pulse_transports.follow import LogFollower
    from pulse_transports.position import Checkpoint, Position, position_matches

    path = run_file(cfg.home, tid, LOG_SUFFIX)
    checkpoint: Checkpoint | None = None
    bad_before = 0
    if row is not None and row.inode == st.st_ino and st.st_size >= row.size:
        with contextlib.suppress(ValueError, orjson.JSONDecodeError):
            position = Position.from_dict(orjson.loads(row.position))
            if position_matches(path, position):
                checkpoint = Checkpoint(position, decode_state(row.state))
                bad_before = row.bad_lines
    if checkpoint is None:
        # The log's own last checkpoint: only the lines after it are folded
        # (bad lines before it are then not counted).
        checkpoint = last_checkpoint(path, tid)
    follower = LogFollower(path, checkpoint=checkpoint, training_id=tid, fast=True)
    try:
        follower.poll()
        state = follower.state
        writer = None if state.is_terminal else check_writer(cfg.home, tid, state)
        if follower.pending and writer is not True:
            follower.settle()
            state = follower.state
        position = follower.position()
    finally:
        follower.close()
    liveness = _liveness(state, writer, cfg)
    # orjson returns its output in a buffer of at least 4 KiB (16 KiB for a
    # state): a copy of the state's own size is what is kept.
    state_json = bytes(memoryview(encode_state(state)))
    bad = bad_before + follower.bad_lines
    summary = summarize(state, liveness=liveness, now=cfg.now, path=path)
    summary["bad_lines"] = bad
    sort_key = state.created_at if state.created_at is not None else st.st_mtime
    ended = state.is_terminal
    record = RunRecord(
        training_id=tid,
        log=path,
        liveness=liveness,
        writer=writer,
        summary=summary,
        position=position,
        bad_lines=bad,
        sort_key=sort_key,
        # An ended run's state is kept encoded, as when read from the index:
        # a pass over many runs holds ~2 KB per run, not its objects.
        state=None if ended else state,
        state_json=state_json if ended else None,
    )
    new_row = IndexRow(
        training_id=tid,
        inode=st.st_ino,
        device=st.st_dev,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        position=orjson.dumps(position.to_dict()).decode(),
        terminal=int(ended),
        sort_key=sort_key,
        bad_lines=bad,
        summary=orjson.dumps(summary).decode(),
        state=state_json,
    )
    return record, new_row


def _liveness(state: RunState, writer: bool | None, cfg: _Settings) -> Liveness:
    return run_liveness(
        state,
        now=cfg.now,
        writer=writer,
        stale_after=cfg.stale_after,
        lost_after=cfg.lost_after,
    )


def _from_row(row: IndexRow, cfg: _Settings) -> RunRecord:
    path = os.path.join(cfg.folder, row.training_id + LOG_SUFFIX)
    state: RunState | None = None
    writer: bool | None = None
    if row.terminal:
        # Ended runs do not change: the stored summary is final (but the home
        # may have moved since, so the log path is the current one); the state
        # is decoded only if asked for.
        liveness: Liveness = ENDED
        summary = orjson.loads(row.summary)
        summary["log"] = path
    else:
        state = decode_state(row.state)
        writer = check_writer(cfg.home, row.training_id, state)
        liveness = _liveness(state, writer, cfg)
        summary = summarize(state, liveness=liveness, now=cfg.now, path=path)
        summary["bad_lines"] = row.bad_lines
    return RunRecord(
        training_id=row.training_id,
        log=path,
        liveness=liveness,
        writer=writer,
        summary=summary,
        position_json=row.position,
        bad_lines=row.bad_lines,
        sort_key=row.sort_key,
        state=state,
        state_json=row.state if state is None else None,
    )


def _settings(
    home: Path | str, now: float | None, stale_after: float, lost_after: float
) -> _Settings:
    root = Path(home)
    if not root.is_dir():
        raise HomeNotFound(f"PULSE home {root} does not exist (set --home or PULSE_HOME)")
    return _Settings(
        home=root,
        folder=log_dir(root),
        now=time.time() if now is None else now,
        stale_after=stale_after,
        lost_after=lost_after,
    )


def _records(
    found: dict[str, os.stat_result], index: RunIndex, cfg: _Settings, *, one: str | None = None
) -> list[RunRecord]:
    rows = index.rows(one)
    records: list[RunRecord] = []
    fresh: list[IndexRow] = []
    for tid, st in found.items():
        row = rows.pop(tid, None)  # what is left at the end: logs gone
        record = None
        if row is not None and _same_file(row, st):
            try:
                record = _from_row(row, cfg)
            except (ValueError, orjson.JSONDecodeError, TypeError, KeyError) as exc:
                log.debug(
                    "pulse index row unreadable; rebuilding it", training_id=tid, error=str(exc)
                )
        if record is None:
            record, new_row = _fold(tid, st, row, cfg)
            fresh.append(new_row)
            if len(fresh) >= WRITE_BATCH:
                index.write(fresh)
                fresh = []
        records.append(record)
    index.write(fresh, list(rows))
    return records


def recover(
    home: Path | str,
    *,
    now: float | None = None,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
    limit: int | None = None,
    use_index: bool = True,
) -> list[RunRecord]:
    """Return the last known state of every run in *home*, newest first.

    Reads ``<home>/logs/training/*.jsonl`` through the index (see the module
    doc): unchanged logs cost one ``stat`` each, grown ones are read from
    where they were left, everything else is folded from the log.

    Args:
        home: the PULSE home folder.
        now: the current time (Unix seconds) for liveness and durations.
        stale_after, lost_after: the liveness thresholds (seconds).
        limit: return at most this many runs (the newest).
        use_index: False to fold every log and leave the index alone.

    Raises:
        HomeNotFound: if *home* does not exist.
    """
    cfg = _settings(home, now, stale_after, lost_after)
    found = _scan(cfg.folder)
    index = RunIndex(cfg.home)
    if use_index and (found or index.path.exists()):
        index.open()
    try:
        records = _records(found, index, cfg)
    finally:
        index.close()
    records.sort(key=lambda r: (r.sort_key, r.training_id), reverse=True)
    return records[:limit] if limit is not None else records


def load_run(
    home: Path | str,
    training_id: str,
    *,
    now: float | None = None,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
    use_index: bool = True,
) -> RunRecord:
    """Return what is known about one run.

    Raises:
        InvalidTrainingId: if *training_id* is not a valid id.
        HomeNotFound: if *home* does not exist.
        RunNotFound: if the run has no log.
    """
    validate_training_id(training_id)
    cfg = _settings(home, now, stale_after, lost_after)
    path = log_path(cfg.home, training_id)
    try:
        st = path.stat()
    except OSError:
        raise RunNotFound(f"no run {training_id!r} under {cfg.home} (no {path})") from None
    index = RunIndex(cfg.home)
    if use_index:
        index.open()
    try:
        return _records({training_id: st}, index, cfg, one=training_id)[0]
    finally:
        index.close()


def v1_choice(records: Iterable[RunRecord]) -> RunRecord | None:
    """The run the v1 slot shows: the most recently active live run, else the last one.

    A live run is alive or stale; "most recently active" is the latest last
    event. Without a live run it is the run (ended or lost) whose last event
    is the latest.
    """
    pool = list(records)

    def last(record: RunRecord) -> tuple[float, str]:
        at = record.summary.get("last_event_at")
        return (at if isinstance(at, int | float) else record.sort_key, record.training_id)

    live = [r for r in pool if r.liveness not in (ENDED, LOST)]
    candidates = live or pool
    return max(candidates, key=last) if candidates else None
