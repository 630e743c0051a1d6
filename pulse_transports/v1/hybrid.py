"""Hybrid mode: v2 data for a run when it exists, the v1 snapshot when it does not.

This module owns relating a PULSE v1 snapshot (read by
:mod:`pulse_transports.v1.snapshot`) to the v2 runs of a home, and the hybrid view a consumer
(the Flow Manager, a TrainingPanel backend) builds from both without ever
showing one run twice:

* :func:`find_owner` -- the v2 run a snapshot was produced from. A
  ``V1SnapshotSink`` writes only the six v1 keys, so the match is made on
  content and time (see :func:`find_owner` for the rule).
* :class:`HybridReader` -- every v2 run (via
  :func:`pulse_transports.history.recover`) plus, when the snapshot matches
  none of them, one v1-only run; honest liveness for both.
* :func:`heal_v1_snapshot` -- a reader rewriting the snapshot of a v2 run
  whose writer is gone, so raw-file v1 pollers do not see ``running`` forever.

Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from pulse_core._log import get_logger
from pulse_core.liveness import (
    ENDED,
    LOST,
    LOST_AFTER,
    STALE,
    STALE_AFTER,
    Liveness,
    by_silence,
)
from pulse_core.policy import LOG_INTERVAL
from pulse_core.projections import LOST_MESSAGE, V1_KEYS, to_v1, to_view
from pulse_core.state import RunState
from pulse_transports.file import write_json_atomic
from pulse_transports.history import HomeNotFound, RunRecord, recover, summarize
from pulse_transports.v1.snapshot import (
    V1_FILE,
    InvalidSnapshot,
    V1Snapshot,
    parse_snapshot,
    read_snapshot,
    same_number,
)

log = get_logger("pulse.hybrid")

#: The training id a v1-only run is shown under (there is one v1 slot).
V1_ONLY_ID: Final = "v1-snapshot"
#: Seconds a snapshot may be newer than the last event in its run's log: the
#: durable log gets progress at most once a LOG_INTERVAL (1 s), the v1 file
#: ten times as often: two of the log's intervals.
MATCH_SLACK: Final = 2 * LOG_INTERVAL
#: Two times closer than this are the same time (the v1 file keeps milliseconds).
SAME_TIME: Final = 0.002


# -- matching a snapshot to a v2 run ---------------------------------------------


def _same_as_state(snapshot: V1Snapshot, state: RunState) -> bool:
    """True when the run's own v1 projection says what the snapshot says."""
    mine = to_v1(state)
    if snapshot.status != state.status or snapshot.message != mine["message"]:
        return False
    if (snapshot.epoch or 0) != mine["epoch"] or (snapshot.total_epochs or 0) != mine[
        "total_epochs"
    ]:
        return False
    return same_number(snapshot.loss, mine["loss"])


def _window_end(record: RunRecord, now: float, slack: float) -> float | None:
    state = record.state
    if state.last_event_at is None:
        return None
    if not state.is_terminal and record.writer is not False and record.liveness != LOST:
        return now + 1.0  # its writer may have written the file after its last log line
    return state.last_event_at + (SAME_TIME if state.is_terminal else slack)


def find_owner(
    snapshot: V1Snapshot,
    records: Iterable[RunRecord],
    *,
    now: float | None = None,
    slack: float = MATCH_SLACK,
) -> RunRecord | None:
    """The v2 run a v1 snapshot was produced from, or None.

    A run is a candidate when the snapshot's time lies within the run's life:
    from its first event to its last event (plus *slack* seconds for a run
    whose writer is gone: the v1 file is written more often than the log;
    to *now* for a run whose writer may still be writing). Among the
    candidates the best is, in this order: one whose own v1 projection
    equals the snapshot; one whose last event has the snapshot's time; one
    in the snapshot's status; the one whose last event is nearest in time.
    A snapshot without a readable timestamp matches only a run whose v1
    projection equals it.

    Args:
        snapshot: the v1 snapshot.
        records: the v2 runs (as :func:`~pulse_transports.history.recover` returns them).
        now: the current time (Unix seconds).
        slack: see above.
    """
    moment = time.time() if now is None else now
    best: tuple[tuple[bool, bool, bool, float], RunRecord] | None = None
    for record in records:
        state = record.state
        created, last = state.created_at, state.last_event_at
        if created is None or last is None:
            continue
        same = _same_as_state(snapshot, state)
        at = snapshot.timestamp
        if at is None:
            if not same:
                continue
            score = (True, False, True, 0.0)
        else:
            end = _window_end(record, moment, slack)
            if end is None or not created - SAME_TIME <= at <= end:
                continue
            same_time = abs(last - at) <= SAME_TIME
            score = (
                same and same_time,
                same_time,
                snapshot.status == state.status,
                -abs(last - at),
            )
        if best is None or score > best[0]:
            best = (score, record)
    return best[1] if best is not None else None


# -- the hybrid view ---------------------------------------------------------------


def snapshot_liveness(
    snapshot: V1Snapshot,
    *,
    now: float,
    modified: float | None = None,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
) -> Liveness:
    """Liveness of a v1-only run: from the silence since its last update.

    The snapshot's timestamp is the last sign of life (the file's
    modification time when it has none). A v1 writer cannot be checked any
    other way, so only silence decides: ``ended`` for a terminal status,
    ``lost`` after *lost_after* seconds, ``stale`` after *stale_after*.
    """
    if snapshot.terminal:
        return ENDED
    last = snapshot.timestamp if snapshot.timestamp is not None else modified
    if last is None:
        return STALE
    return by_silence(now - last, stale_after=stale_after, lost_after=lost_after)


def snapshot_state(snapshot: V1Snapshot, training_id: str = V1_ONLY_ID) -> RunState:
    """A v1 snapshot as a RunState, so the v2 projections can show it."""
    metrics = {"loss": snapshot.loss} if snapshot.loss is not None else {}
    return RunState(
        training_id=training_id,
        status=snapshot.status or snapshot.raw_status,
        message=snapshot.message,
        epoch=snapshot.epoch,
        total_epochs=snapshot.total_epochs,
        metrics=metrics,
        best_loss=snapshot.loss,
        created_at=snapshot.timestamp,
        last_event_at=snapshot.timestamp,
        status_since=snapshot.timestamp,
    )


@attrs.frozen
class HybridRun:
    """One run as a hybrid consumer shows it.

    Attributes:
        training_id: the v2 run's id, or :data:`V1_ONLY_ID` for a v1-only run.
        liveness: alive, stale, lost or ended.
        v1: the honest six-key v1 snapshot of the run (a lost run shows
            ``status: "error"``, never ``running`` forever).
        summary: the ``pulse ls --json`` row of the run, plus ``source``.
        record: the v2 run as recovered (None for a v1-only run).
        snapshot: the v1 snapshot (for the run the file shows, else None).
    """

    training_id: str
    liveness: Liveness
    v1: Mapping[str, Any]
    summary: Mapping[str, Any]
    record: RunRecord | None = None
    snapshot: V1Snapshot | None = None

    @property
    def source(self) -> Literal["v2", "v1"]:
        """``"v2"`` if a v2 log exists (its data wins), ``"v1"`` if only the snapshot knows it."""
        return "v2" if self.record is not None else "v1"

    @property
    def in_v1_file(self) -> bool:
        """True when the v1 snapshot file currently shows this run."""
        return self.snapshot is not None

    @property
    def state(self) -> RunState:
        """The run's state: folded from its log, or built from the snapshot."""
        if self.record is not None:
            return self.record.state
        assert self.snapshot is not None
        return snapshot_state(self.snapshot, self.training_id)

    def view(self, now: float | None = None) -> dict[str, Any]:
        """The v2 view (:func:`pulse_core.projections.to_view`) of the run."""
        moment = time.time() if now is None else now
        return to_view(self.state, now=moment, liveness=self.liveness)

    @property
    def last_activity(self) -> float:
        """When the run was last heard from (for choosing the v1 slot)."""
        at = self.summary.get("last_event_at")
        return float(at) if isinstance(at, int | float) else 0.0


@attrs.define(eq=False)
class HybridReader:
    """Runs of a PULSE home, v2 first, with the v1 snapshot as a fallback.

    The algorithm (docs: "Migration from v1 and hybrid mode"):

    1. Recover every v2 run of the home with honest liveness.
    2. Read the v1 snapshot file; if it is unusable, there is no v1 part.
    3. Find the v2 run the snapshot came from (:func:`find_owner`). If there
       is one, that run is shown once, from its v2 data, marked as the run
       the v1 file shows. If there is none, the snapshot is one more run,
       ``source="v1"``, under :data:`V1_ONLY_ID`, its liveness from its age.

    Args:
        home: the PULSE home.
        v1_path: the snapshot file (default ``<home>/training_status.json``).
        stale_after, lost_after: liveness thresholds (seconds).
        slack: see :func:`find_owner`.
    """

    home: Path = attrs.field(converter=Path)
    _given_v1_path: Path | str | None = attrs.field(default=None, alias="v1_path")
    stale_after: float = attrs.field(default=STALE_AFTER, kw_only=True)
    lost_after: float = attrs.field(default=LOST_AFTER, kw_only=True)
    slack: float = attrs.field(default=MATCH_SLACK, kw_only=True)
    v1_path: Path = attrs.field(init=False)  # the snapshot file, from home and the given path

    def __attrs_post_init__(self) -> None:
        given = self._given_v1_path
        self.v1_path = Path(given) if given is not None else self.home / V1_FILE

    def records(self, now: float) -> list[RunRecord]:
        """The v2 runs of the home, newest first (none if the home is missing)."""
        try:
            return recover(
                self.home, now=now, stale_after=self.stale_after, lost_after=self.lost_after
            )
        except HomeNotFound:
            return []

    def runs(self, now: float | None = None) -> list[HybridRun]:
        """Every run once, newest first: v2 runs, and a v1-only run if any."""
        moment = time.time() if now is None else now
        records = self.records(moment)
        snapshot, modified = self._snapshot()
        owner = find_owner(snapshot, records, now=moment, slack=self.slack) if snapshot else None
        out: list[tuple[float, HybridRun]] = []
        for record in records:
            mine = owner is not None and record.training_id == owner.training_id
            summary = {**record.summary, "source": "v2"}
            out.append(
                (
                    record.sort_key,
                    HybridRun(
                        training_id=record.training_id,
                        liveness=record.liveness,
                        v1=to_v1(record.state, liveness=record.liveness),
                        summary=summary,
                        record=record,
                        snapshot=snapshot if mine else None,
                    ),
                )
            )
        if snapshot is not None and owner is None:
            only = self._v1_only(snapshot, modified, moment)
            out.append((snapshot.timestamp or modified or 0.0, only))
        out.sort(key=lambda item: (item[0], item[1].training_id), reverse=True)
        return [run for _, run in out]

    def v1(self, now: float | None = None) -> dict[str, Any] | None:
        """The honest six-key snapshot the v1 slot should show; None without runs.

        The most recently active live run (alive or stale), else the run
        last heard from -- the same rule as ``pulse v1``, over v2 runs and
        the v1-only run alike.
        """
        runs = self.runs(now)
        live = [r for r in runs if r.liveness not in (ENDED, LOST)]
        pool = live or runs
        if not pool:
            return None
        chosen = max(pool, key=lambda r: (r.last_activity, r.training_id))
        return dict(chosen.v1)

    def heal(self, now: float | None = None) -> bool:
        """Rewrite the v1 file if it shows a lost v2 run (:func:`heal_v1_snapshot`)."""
        return heal_v1_snapshot(
            self.home,
            self.v1_path,
            now=now,
            stale_after=self.stale_after,
            lost_after=self.lost_after,
            slack=self.slack,
        )

    def _snapshot(self) -> tuple[V1Snapshot | None, float | None]:
        try:
            modified = self.v1_path.stat().st_mtime
        except OSError:
            return None, None
        return read_snapshot(self.v1_path), modified

    def _v1_only(self, snapshot: V1Snapshot, modified: float | None, now: float) -> HybridRun:
        liveness = snapshot_liveness(
            snapshot,
            now=now,
            modified=modified,
            stale_after=self.stale_after,
            lost_after=self.lost_after,
        )
        state = snapshot_state(snapshot)
        if state.last_event_at is None and modified is not None:
            state = attrs.evolve(state, created_at=modified, last_event_at=modified)
        honest = {key: snapshot.data.get(key) for key in V1_KEYS}
        if liveness == LOST:
            honest["status"] = "error"
            honest["message"] = f"{LOST_MESSAGE} (last status {snapshot.raw_status})"
        summary = summarize(state, liveness=liveness, now=now, path=self.v1_path)
        summary.update(source="v1", name="v1 snapshot", bad_lines=0)
        return HybridRun(
            training_id=V1_ONLY_ID,
            liveness=liveness,
            v1=honest,
            summary=summary,
            snapshot=snapshot,
        )


# -- healing the raw file ---------------------------------------------------------


def healed_snapshot(snapshot: V1Snapshot, record: RunRecord) -> dict[str, Any] | None:
    """The six keys the v1 file should hold instead of *snapshot*; None if it is honest.

    Only a snapshot in an unfinished status whose run has ended or is lost
    changes. A lost run shows ``status: "error"`` with the lost message and
    keeps the file's progress, loss and timestamp (the last sign of life);
    an ended run (a supervisor recorded how the process died) shows its end
    from the v2 log, keeping the file's epoch when it is further along.
    """
    if snapshot.terminal or record.liveness not in (LOST, ENDED):
        return None
    state = record.state
    if record.liveness == LOST:
        healed = {key: snapshot.data.get(key) for key in V1_KEYS}
        healed["status"] = "error"
        healed["message"] = f"{LOST_MESSAGE} (last status {snapshot.raw_status})"
        return healed
    healed = to_v1(state)
    healed["epoch"] = max(int(healed["epoch"]), snapshot.epoch or 0)
    return healed


def heal_v1_snapshot(
    home: Path | str,
    v1_path: Path | str | None = None,
    *,
    now: float | None = None,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
    slack: float = MATCH_SLACK,
    records: Sequence[RunRecord] | None = None,
) -> bool:
    """Make the v1 file honest about a v2 run that can no longer update it.

    A v2 run's writer keeps ``training_status.json`` current while it lives;
    once it is killed the file says ``running`` forever. This reader-side
    repair finds the v2 run the file shows (:func:`find_owner`) and, if that
    run is lost (its writer is gone) or ended after the file was written,
    rewrites the file atomically with :func:`healed_snapshot`. The file is
    re-read just before the rewrite and left alone if it changed meanwhile
    (a new run's writer got there first). v1-only snapshots (no v2 run) are
    never rewritten: their writer may still come back.

    Args:
        home: the PULSE home.
        v1_path: the snapshot file (default ``<home>/training_status.json``).
        now: the current time (Unix seconds).
        stale_after, lost_after, slack: as for :class:`HybridReader`.
        records: the home's runs, if the caller already recovered them.

    Returns:
        True if the file was rewritten.
    """
    root = Path(home)
    path = Path(v1_path) if v1_path is not None else root / V1_FILE
    moment = time.time() if now is None else now
    try:
        before = path.read_bytes()
    except OSError:
        return False
    try:
        snapshot = parse_snapshot(before)
    except InvalidSnapshot:
        return False
    if snapshot.terminal:
        return False
    if records is None:
        try:
            records = recover(root, now=moment, stale_after=stale_after, lost_after=lost_after)
        except HomeNotFound:
            return False
    owner = find_owner(snapshot, records, now=moment, slack=slack)
    if owner is None:
        return False
    healed = healed_snapshot(snapshot, owner)
    if healed is None:
        return False
    try:
        if path.read_bytes() != before:
            return False  # rewritten since we read it: the newer writer wins
        write_json_atomic(path, healed)
    except OSError as exc:
        log.warning("pulse could not heal the v1 snapshot", path=str(path), error=str(exc))
        return False
    log.info(
        "pulse rewrote the v1 snapshot of a run that can no longer update it",
        path=str(path),
        training_id=owner.training_id,
        liveness=owner.liveness,
    )
    return True
