"""The v1 -> v2 bridge: a legacy ``training_status.json`` turned into v2 runs.

This module owns :class:`V1FileSource` (the ``v1file`` source of the
``pulse.sources`` entry-point group, and ``pulse bridge``): it polls a
snapshot file written by an old v1-only training script and writes what
changes as v2 events into the home's file log -- so ``pulse ls``, ``show``,
``watch`` and Flow History work with v1 producers -- and optionally to more
sinks. Reading the snapshot itself (status words, timestamps) and relating
it to v2 runs is :mod:`pulse_transports.v1.snapshot` and
:mod:`pulse_transports.v1.hybrid`.

The rules below are :mod:`pulse_transports.v1._translate`'s. Events per
change (all stamped with the snapshot's timestamp, never going back in time
within a run): a ``status`` change (through ``running`` when
the lifecycle needs a step in between, e.g. a first snapshot that already
says ``done``), or a restatement when only the message changed; a
``progress`` event when ``epoch`` or ``total_epochs`` changed; a
``metrics`` event when ``loss`` changed; a ``heartbeat`` (at most every 5 s)
when only the timestamp moved. A v1 ``error`` status also gets an ``error``
event (code ``V1_ERROR``, the v1 message) before it, as v2 requires. A status
the lifecycle forbids (``running`` after ``cooling_down``) is not sent;
progress and loss still are.

Run boundaries -- a new run (a new training_id) starts when:

1. there is no open run and the snapshot is not ``idle`` (a terminal
   snapshot equal, timestamp aside, to the previous run's end is the same
   run's end again, not a new run);
2. the open run ended (done, error, cancelled) and a different snapshot
   follows;
3. the open run is unfinished and the snapshot says ``preparing`` or
   ``running`` with ``epoch`` back at 0 or 1 from a higher epoch, or says
   ``preparing`` after ``running``/``cooling_down``: the old run ended
   without the bridge seeing how;
4. (no new run, but an end) the open run is unfinished and the snapshot
   says ``idle``.

A run ended unseen (3, 4) gets a non-fatal ``PROCESS_LOST`` error event and
no terminal status: the bridge releases its log, so readers show it as
``lost`` -- its outcome is unknown, and PULSE says so.

training_id: ``v1-<UTC time of the run's first snapshot, YYYYmmdd-HHMMSS-mmm>-<n>``,
``n`` counting up from 1 past ids already in the home. A run's ``meta``
carries the labels ``pulse.source=v1file`` and ``pulse.v1_path=<file>``;
a restarted bridge finds its last run by them and continues it (same log,
next seq) instead of bridging the same snapshot twice.

Snapshots written by v2 runs (a ``V1SnapshotSink`` on the same file) are
recognised (:func:`pulse_transports.v1.hybrid.find_owner`) and not bridged;
when such a run's writer is gone the bridge heals the file
(:func:`pulse_transports.v1.hybrid.heal_v1_snapshot`) unless told not to.

A missing, half-written or invalid snapshot is skipped (counted, logged),
never fatal. Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.closing import ClosesOnExit
from pulse_core.errors import ConfigError, PulseError, RunLocked
from pulse_core.events import (
    ErrorReported,
    Event,
    RunMeta,
    validate_training_id,
)
from pulse_core.liveness import LOST
from pulse_core.policy import BAD_LOG_EVERY, BAD_LOG_FIRST, sampled
from pulse_core.ports import Sink
from pulse_transports.file import FileSink, log_path, writer_alive
from pulse_transports.history import HomeNotFound, RunRecord, recover
from pulse_transports.v1._translate import (
    PATH_LABEL,
    SOURCE_LABEL,
    SOURCE_NAME,
    BridgedRun,
    ends_unseen,
    is_bridged,
    snapshot_changes,
    training_id_for,
)
from pulse_transports.v1.hybrid import find_owner, heal_v1_snapshot
from pulse_transports.v1.snapshot import V1_FILE, InvalidSnapshot, V1Snapshot, parse_snapshot

log = get_logger("pulse.v1bridge")

#: Default seconds between two reads of the snapshot file.
DEFAULT_INTERVAL: Final = 0.25
#: Seconds between two checks whether a v2 run shown in the file was lost.
HEAL_EVERY: Final = 1.0
#: Transports the bridge refuses as extra sinks: ``v1`` would write the very
#: file it reads; ``file`` is always there.
_REFUSED: Final = frozenset({"v1"})


def _sinks(factories: Sequence[Callable[[], Sink]]) -> list[Callable[[], Sink]]:
    return list(factories)


def _positive(source: V1FileSource, attribute: attrs.Attribute[float], interval: float) -> None:
    if not interval > 0:
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")


@attrs.define(eq=False, kw_only=True, slots=False)
class V1FileSource(ClosesOnExit):
    """Bridge a legacy v1 snapshot file into v2 runs (the ``v1file`` source).

    Call :meth:`poll` repeatedly (every ``interval`` seconds), or
    :meth:`run` to do so until stopped; :meth:`close` releases the open
    run's log (an unfinished run then shows as ``lost`` until a bridge
    continues it).

    Args:
        home: the PULSE home the v2 logs go to.
        path: the v1 snapshot file (relative paths are relative to *home*;
            default ``<home>/training_status.json``).
        interval: seconds between two reads of the file in :meth:`run`.
        sinks: factories of more sinks for each run (called once per run;
            a sink is bound to one run).
        heal: rewrite the file when it shows a v2 run whose writer is gone
            (:func:`pulse_transports.v1.hybrid.heal_v1_snapshot`).
        clock: the wall clock (Unix seconds), for snapshots without a timestamp.
        fsync: fsync status lines of the log (off only in benchmarks).

    Attributes:
        invalid: snapshot readings skipped as unusable (torn, not JSON, ...).
        skipped_v2: snapshot changes recognised as a v2 run's and not bridged.
        ignored_statuses: status changes not sent (unknown word or not allowed).
        sink_failures: event writes a sink refused (logged; the bridge goes on).
        healed: times the file was rewritten for a lost v2 run.
        runs_started: runs this source started.
    """

    name: ClassVar[str] = "v1file"
    OPTIONS: ClassVar[dict[str, type]] = {"path": str, "interval": float, "heal": bool}

    home: Path = attrs.field(converter=Path)
    _given_path: Path | str | None = attrs.field(default=None, alias="path")
    interval: float = attrs.field(default=DEFAULT_INTERVAL, validator=_positive)
    _factories: list[Callable[[], Sink]] = attrs.field(default=(), converter=_sinks, alias="sinks")
    heal: bool = True
    _clock: Callable[[], float] = time.time
    _fsync: bool = True
    invalid: int = attrs.field(default=0, init=False)
    skipped_v2: int = attrs.field(default=0, init=False)
    ignored_statuses: int = attrs.field(default=0, init=False)
    sink_failures: int = attrs.field(default=0, init=False)
    healed: int = attrs.field(default=0, init=False)
    runs_started: int = attrs.field(default=0, init=False)
    _run: BridgedRun | None = attrs.field(default=None, init=False)
    path: Path = attrs.field(init=False)  # the v1 file, from home and the given path
    _label: str = attrs.field(init=False)  # the file's resolved path, in the runs' labels
    #: the end of the last closed run.
    _last_end: V1Snapshot | None = attrs.field(default=None, init=False)
    _last_bytes: bytes | None = attrs.field(default=None, init=False)
    _v2_owner: str | None = attrs.field(default=None, init=False)  # the v2 run the file showed last
    _next_heal: float = attrs.field(default=0.0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _resumed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        given = self._given_path
        self.path = self.home / (given if given is not None else V1_FILE)
        self._label = str(self.path.resolve())

    @classmethod
    def from_transports(
        cls, *, home: Path | str, transports: Sequence[str] = (), **kwargs: Any
    ) -> V1FileSource:
        """Build a source whose runs also go to the named transports.

        Raises:
            ConfigError: for an unknown transport, or ``v1`` (it would write
                the file being read).
        """
        from pulse_transports.config import load_config
        from pulse_transports.registry import make_sinks

        names = tuple(dict.fromkeys(n for n in transports if n != "file"))
        refused = [n for n in names if n in _REFUSED]
        if refused:
            raise ConfigError(
                "the v1 bridge cannot also write the v1 snapshot (it reads it); "
                f"drop transport {refused[0]!r}"
            )
        options: Mapping[str, Mapping[str, Any]] = {}
        if names:
            options = {
                n: o for n, o in load_config(home=home).transport_options.items() if n in names
            }
            make_sinks(names, Path(home), options)  # fail now, not at the first run

        def factory(name: str) -> Callable[[], Sink]:
            return lambda: make_sinks((name,), Path(home), options)[0]

        return cls(home=home, sinks=[factory(n) for n in names], **kwargs)

    # -- public ---------------------------------------------------------------------

    @property
    def training_id(self) -> str | None:
        """The id of the unfinished run being bridged now, if any."""
        run = self._run
        return run.training_id if run is not None and not run.ended else None

    def poll(self) -> list[Event]:
        """Read the file once and bridge what changed.

        Returns:
            The events written (to the log and the other sinks), in order.
        """
        if self._closed:
            return []
        if not self._resumed:
            self._resumed = True
            self._resume()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._skip(f"unreadable: {exc}")
            return []
        if data == self._last_bytes:
            self._maybe_heal()
            return []
        try:
            snapshot = parse_snapshot(data)
        except InvalidSnapshot as exc:
            self._skip(str(exc))
            return []
        out = self._apply(snapshot)
        self._last_bytes = data  # only now: a failed apply is tried again next poll
        self._maybe_heal()
        return out

    def run(self, stop: threading.Event | None = None) -> None:
        """Poll every ``interval`` seconds until *stop* is set, then close."""
        halt = stop or threading.Event()
        try:
            while not halt.is_set():
                try:
                    self.poll()
                except PulseError:
                    raise
                except Exception:
                    # A bug or an OS surprise must not end the bridge: log it, go on.
                    log.exception("pulse v1 bridge poll failed", path=str(self.path))
                halt.wait(self.interval)
        finally:
            self.close()

    def close(self) -> None:
        """Release the open run's sinks; idempotent."""
        self._closed = True
        if self._run is not None:
            self._close_sinks(self._run)
            self._run = None

    # -- deciding ---------------------------------------------------------------------

    def _apply(self, snapshot: V1Snapshot) -> list[Event]:
        run = self._run
        if run is not None and not run.ended:
            reason = ends_unseen(run, snapshot)
            if reason is not None:
                out = self._end_unseen(run, reason)
                if snapshot.status == "idle":
                    return out
                return out + self._start(snapshot)
            return self._update(run, snapshot)
        if run is not None:  # ended: closed already, kept for its last snapshot
            self._run = None
        if snapshot.status in (None, "idle"):
            return []
        last = self._last_end
        if snapshot.terminal and last is not None and snapshot.same_content(last):
            return []  # the same end again (a writer refreshing the timestamp)
        return self._start(snapshot)

    # -- writing ----------------------------------------------------------------------

    def _start(self, snapshot: V1Snapshot) -> list[Event]:
        if self._is_v2(snapshot):
            self.skipped_v2 += 1
            return []
        at = snapshot.timestamp if snapshot.timestamp is not None else self._clock()
        run = self._open_new(at)
        self.runs_started += 1
        meta = RunMeta(
            training_id=run.training_id,
            seq=self._seq(run),
            timestamp=at,
            name=f"v1: {self.path.name}",
            total_epochs=snapshot.total_epochs,
            host=socket.gethostname(),
            labels={SOURCE_LABEL: SOURCE_NAME, PATH_LABEL: self._label},
        )
        run.last_at = at
        log.info("pulse v1 bridge: new run", training_id=run.training_id, path=str(self.path))
        return self._send(run, [meta]) + self._update(run, snapshot)

    def _update(self, run: BridgedRun, snapshot: V1Snapshot) -> list[Event]:
        at = snapshot.timestamp if snapshot.timestamp is not None else self._clock()
        at = max(at, run.last_at)
        events, ignored = snapshot_changes(run, snapshot, at)
        self.ignored_statuses += ignored
        tid = run.training_id
        # Numbered in the order they are written.
        events = [attrs.evolve(event, seq=self._seq(run)) for event in events]
        run.last_at = at
        out = self._send(run, events)
        if run.ended:
            self._last_end = snapshot
            self._close_sinks(run)
            log.info("pulse v1 bridge: run ended", training_id=tid, status=run.status)
        return out

    def _end_unseen(self, run: BridgedRun, reason: str) -> list[Event]:
        event = ErrorReported(
            training_id=run.training_id,
            seq=self._seq(run),
            timestamp=run.last_at,
            error_code="PROCESS_LOST",
            message=f"the run ended without the bridge seeing how: {reason}",
            details={"v1_path": self._label},
        )
        out = self._send(run, [event])
        self._close_sinks(run)
        self._run = None
        self._last_end = None
        log.info("pulse v1 bridge: run lost", training_id=run.training_id, reason=reason)
        return out

    def _seq(self, run: BridgedRun) -> int:
        run.seq += 1
        return run.seq

    def _open_new(self, at: float) -> BridgedRun:
        n = 1
        while True:
            tid = validate_training_id(training_id_for(at, n))
            if not log_path(self.home, tid).exists():
                break
            n += 1
        return self._open(tid)

    def _open(self, training_id: str) -> BridgedRun:
        file_sink = FileSink(home=self.home, fsync=self._fsync)
        held = file_sink.open(training_id)  # RunLocked: another bridge has it
        sinks: list[Sink] = [file_sink]
        for factory in self._factories:
            try:
                sink = factory()
                sink.open(training_id)
            except Exception as exc:  # noqa: BLE001 - an extra sink never stops the bridge
                self.sink_failures += 1
                log.warning(
                    "pulse v1 bridge: a sink could not be opened; bridging without it",
                    training_id=training_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            sinks.append(sink)
        run = BridgedRun(training_id, sinks, held or 0)
        self._run = run
        return run

    def _send(self, run: BridgedRun, events: list[Event]) -> list[Event]:
        for sink in run.sinks:
            for event in events:
                try:
                    sink.write(event)
                except Exception as exc:  # noqa: BLE001 - logged and counted, never fatal
                    self.sink_failures += 1
                    if sampled(self.sink_failures):
                        log.warning(
                            "pulse v1 bridge: a sink failed to take an event",
                            sink=str(getattr(sink, "name", type(sink).__name__)),
                            training_id=run.training_id,
                            error=f"{type(exc).__name__}: {exc}",
                            failures=self.sink_failures,
                        )
        return events

    def _close_sinks(self, run: BridgedRun) -> None:
        for sink in run.sinks:
            with contextlib.suppress(Exception):
                sink.flush(True)
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - closing must release the others too
                log.warning("pulse v1 bridge: closing a sink failed", error=str(exc))
        run.sinks = []

    def _skip(self, why: str) -> None:
        self.invalid += 1
        if sampled(self.invalid, BAD_LOG_EVERY, first=BAD_LOG_FIRST):
            log.debug("pulse v1 bridge: snapshot skipped", path=str(self.path), reason=why[:200])

    # -- v2 runs in the same file -------------------------------------------------

    def _records(self) -> list[RunRecord]:
        try:
            return recover(self.home)
        except HomeNotFound:
            return []

    def _is_v2(self, snapshot: V1Snapshot) -> bool:
        """True when a v2 run (not one of ours) wrote this snapshot."""
        owner_id = self._v2_owner
        if owner_id is not None and writer_alive(self.home, owner_id) is True:
            return True  # the same live v2 run is still writing the file
        owner = find_owner(snapshot, self._records(), now=self._clock())
        if owner is None or is_bridged(owner.state, self._label):
            self._v2_owner = None
            return False
        self._v2_owner = owner.training_id
        self._next_heal = 0.0
        return True

    def _maybe_heal(self) -> None:
        """Heal the file when the v2 run it shows lost its writer (checked every second)."""
        owner_id = self._v2_owner
        if not self.heal or owner_id is None:
            return
        now = time.monotonic()
        if now < self._next_heal:
            return
        self._next_heal = now + HEAL_EVERY
        if writer_alive(self.home, owner_id) is True:
            return
        records = self._records()
        if heal_v1_snapshot(self.home, self.path, now=self._clock(), records=records):
            self.healed += 1
            self._v2_owner = None
        elif not any(r.training_id == owner_id and r.liveness == LOST for r in records):
            self._v2_owner = None  # ended and shown so, or gone: nothing left to heal

    def _resume(self) -> None:
        """Find this file's last bridged run: continue it, or remember its end."""
        mine = [r for r in self._records() if is_bridged(r.state, self._label)]
        if not mine:
            return
        last = max(mine, key=lambda r: (r.state.created_at or 0.0, r.training_id))
        state = last.state
        if state.is_terminal:
            self._last_end = V1Snapshot(
                raw_status=state.status,
                status=state.status,
                epoch=state.epoch,
                total_epochs=state.total_epochs,
                loss=state.metrics.get("loss"),
                message=state.message,
                timestamp=state.last_event_at,
                data={},
            )
            return
        try:
            run = self._open(last.training_id)
        except RunLocked as exc:
            raise PulseError(
                f"another bridge is bridging {self.path} (run {last.training_id}); "
                "run one bridge per v1 file"
            ) from exc
        run.status, run.message = state.status, state.message
        run.epoch, run.total_epochs = state.epoch, state.total_epochs
        run.loss = state.metrics.get("loss")
        run.last_at = state.last_event_at or float("-inf")
        log.info("pulse v1 bridge: continuing run", training_id=run.training_id)
