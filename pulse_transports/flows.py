"""The Flow Manager's API: TRAIN steps that start, follow and record runs.

This module owns what a flow engine needs from PULSE: start a training run
for a flow step (a subprocess command, or an in-process callable that gets a
:class:`~pulse_core.emitter.TrainingRun`), follow it with throttled updates,
wait for it, cancel it, and read the Flow History records back -- from the
logs alone, so everything works again after an application restart.

Attempts: the first run of a step is attempt 1; :meth:`FlowTrainer.retry`
starts a new run (a new training_id) linked to the same flow step with the
next attempt number (one more than the highest attempt already recorded for
that ``flow_run_id`` + ``flow_step_id``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pulse_core._log import get_logger
from pulse_core.emitter import TrainingRun, new_training_id
from pulse_core.errors import RunNotFound
from pulse_core.liveness import Liveness, liveness_of
from pulse_core.ports import RunSource, Sink
from pulse_core.projections import to_history_record, to_metric_history, to_view
from pulse_core.state import RunState
from pulse_transports.config import load_config
from pulse_transports.file import FileSink, log_path
from pulse_transports.filesource import FileSource
from pulse_transports.follow import follow
from pulse_transports.history import HomeNotFound
from pulse_transports.liveness import check_writer, run_liveness
from pulse_transports.registry import make_sinks
from pulse_transports.retention import removed_records
from pulse_transports.supervise import (
    CHILD_LOG_INTERVAL,
    GRACE_PERIOD,
    FlowLink,
    Outcome,
    Supervisor,
    read_state,
)

log = get_logger("pulse.flows")


class TrainStep:
    """A handle on one TRAIN step's run, for the Flow Manager.

    Attributes:
        training_id: the run's id (to drill into its history).
        link: the flow link.
    """

    def __init__(self, trainer: FlowTrainer, training_id: str, link: FlowLink) -> None:
        self.trainer = trainer
        self.training_id = training_id
        self.link = link
        self.started_at = time.time()
        self.ended_at: float | None = None
        self._supervisor: Supervisor | None = None
        self._thread: threading.Thread | None = None
        self._run: TrainingRun | None = None
        self._outcome: Outcome | None = None
        self._done = threading.Event()
        self.exception: BaseException | None = None

    # -- following -----------------------------------------------------------------

    def state(self) -> RunState:
        """The run's state as its log says now."""
        return read_state(self.trainer.home, self.training_id)

    def view(self) -> dict[str, Any]:
        """The run's v2 view now, with honest liveness."""
        return self._view(self.state())

    def _view(self, state: RunState) -> dict[str, Any]:
        now = time.time()
        supervisor = self._supervisor
        if supervisor is not None and not self.finished and supervisor.child_running:
            writer: bool | None = True  # the OS says the process lives (supervisor or child write)
        else:
            writer = check_writer(self.trainer.home, self.training_id, state)
        return to_view(state, now=now, liveness=liveness_of(state, now=now, writer_alive=writer))

    def updates(
        self, interval: float = 0.1, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the run's v2 view when it changed, at most every *interval* s.

        Follows the run's log (OS notifications, polling fallback) as its
        lines land; a supervised child writes progress to the log every
        0.25 s, so updates come within 500 ms. The last value always comes
        out (trailing edge); the final view of the ended run comes out once,
        and the iteration ends after it (or at *timeout*).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stop = threading.Event()
        path = log_path(self.trainer.home, self.training_id)
        shown, last_shown = -1, float("-inf")
        stream = follow(path, stop=stop, tick=interval, training_id=self.training_id)
        try:
            for follower, _events in stream:
                finished = self.finished
                if finished:
                    follower.poll()  # the supervisor's last lines
                now = time.monotonic()
                seq = follower.last_seq
                ended = follower.state.is_terminal
                if seq != shown and (now - last_shown >= interval or finished or ended):
                    shown, last_shown = seq, now
                    yield self._view(follower.state)
                if (finished and seq == shown) or (deadline is not None and now > deadline):
                    return
                if ended and seq == shown and self._done.wait(interval):
                    return  # the final view is out; the outcome is known now too
        finally:
            stop.set()
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # end the follower generator now, releasing its file

    async def aupdates(self, interval: float = 0.1) -> AsyncIterator[dict[str, Any]]:
        """Async version of :meth:`updates` (the follower runs off the event loop)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for view in self.updates(interval=interval):
                    loop.call_soon_threadsafe(queue.put_nowait, view)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, pump)
        while (view := await queue.get()) is not None:
            yield view
        await worker

    # -- ending --------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the run ended and its outcome is known."""
        return self._done.is_set()

    @property
    def outcome(self) -> Outcome | None:
        """The outcome, once finished."""
        return self._outcome

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Wait for the run to end; its outcome, or None on timeout."""
        if not self._done.wait(timeout):
            return None
        return self._outcome

    def cancel(
        self, grace: float = GRACE_PERIOD, message: str = "cancelled by the flow"
    ) -> Outcome:
        """Stop the run; it ends ``cancelled`` within about *grace* seconds.

        A subprocess gets SIGTERM, then SIGKILL after *grace*. An in-process
        callable is asked to stop (``run.cancel_requested`` becomes true); if it
        has not returned after *grace*, the run is ended ``cancelled`` anyway
        and the callable's further reports are ignored.
        """
        if self._supervisor is not None:
            outcome = self._supervisor.cancel(grace=grace, message=message)
            self._done.wait(5.0)
            return outcome or self._final(None)
        run = self._run
        if run is not None and not self.finished:
            run.request_cancel(message)
            if not self._done.wait(grace):
                log.warning(
                    "pulse: callable ignored cancel; ending the run", training_id=self.training_id
                )
                run.cancel(message)
                run.close()
                self._complete(None)
        self._done.wait(5.0)
        return self._outcome or self._final(None)

    def record(self) -> dict[str, Any]:
        """The Flow History record of this step (the run's record + the step's view)."""
        return self.trainer.record(self.training_id, step=self)

    # -- internals -----------------------------------------------------------------

    def _final(self, exit_code: int | None) -> Outcome:
        return Outcome.from_state(self.state(), exit_code)

    def _complete(self, exit_code: int | None) -> None:
        if self._done.is_set():
            return
        self.ended_at = time.time()
        self._outcome = self._final(exit_code)
        self._done.set()


class FlowTrainer:
    """Starts TRAIN steps and answers Flow History queries for one PULSE home.

    Args:
        home: the PULSE home (default: from configuration).
        source: where Flow History is read (default: a
            :class:`~pulse_transports.filesource.FileSource` on *home*).
    """

    def __init__(self, home: Path | str | None = None, *, source: RunSource | None = None) -> None:
        self.config = load_config(home=home)
        self.home = self.config.home
        self.source: RunSource = source or FileSource.from_config(self.config)

    # -- starting ------------------------------------------------------------------

    def start_process(
        self,
        command: Sequence[str],
        *,
        flow_id: str | None = None,
        flow_run_id: str | None = None,
        flow_step_id: str | None = None,
        attempt: int | None = 1,
        training_id: str | None = None,
        name: str | None = None,
        total_epochs: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        claim_timeout: float | None = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> TrainStep:
        """Start a training command for a flow step and return its handle.

        The command runs under a :class:`~pulse_transports.supervise.Supervisor`:
        its run shows ``running`` once it started and stays alive while it
        lives, whether or not it reports; its stderr (unless ``PIPE`` or
        ``STDOUT``) is passed through and its tail kept for the error.
        """
        link = FlowLink(flow_id, flow_run_id, flow_step_id, attempt)
        kwargs: dict[str, Any] = {}
        if claim_timeout is not None:
            kwargs["claim_timeout"] = claim_timeout
        supervisor = Supervisor(
            command,
            home=self.home,
            training_id=training_id,
            link=link,
            name=name,
            total_epochs=total_epochs,
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            config=self.config,
            **kwargs,
        )
        step = TrainStep(self, supervisor.training_id, link)
        step._supervisor = supervisor
        supervisor.start()

        def finish() -> None:
            outcome = supervisor.wait()
            step._complete(outcome.exit_code if outcome else None)

        threading.Thread(target=finish, name=f"pulse-step-{step.training_id}", daemon=True).start()
        return step

    def start_callable(
        self,
        target: Callable[[TrainingRun], object],
        *,
        flow_id: str | None = None,
        flow_run_id: str | None = None,
        flow_step_id: str | None = None,
        attempt: int | None = 1,
        training_id: str | None = None,
        name: str | None = None,
        total_epochs: int | None = None,
        sinks: Sequence[Sink] | None = None,
    ) -> TrainStep:
        """Run ``target(run)`` in a thread of this process as a flow step's run.

        The run always writes the file log (so History works after a restart)
        besides the configured sinks. An exception in *target* ends the run
        ``error`` (see TrainingRun) and is kept on ``step.exception``.
        """
        link = FlowLink(flow_id, flow_run_id, flow_step_id, attempt)
        tid = training_id or new_training_id()
        if sinks is None:
            options = dict(self.config.transport_options)
            # The log is what updates() follows: progress in it every 0.25 s.
            options["file"] = {"interval": CHILD_LOG_INTERVAL, **options.get("file", {})}
            sinks = make_sinks(self.config.transports, self.home, options)
        if not any(isinstance(s, FileSink) for s in sinks):
            sinks = [*sinks, FileSink(home=self.home, interval=CHILD_LOG_INTERVAL)]
        run = TrainingRun(
            tid,
            name=name,
            flow_id=flow_id,
            flow_run_id=flow_run_id,
            flow_step_id=flow_step_id,
            attempt=attempt,
            total_epochs=total_epochs,
            sinks=sinks,
            env={},
        )
        step = TrainStep(self, tid, link)
        step._run = run

        def body() -> None:
            try:
                with run:
                    target(run)
            except BaseException as exc:  # noqa: BLE001 - recorded on the run and the handle
                step.exception = exc
            finally:
                step._complete(None)

        step._thread = threading.Thread(target=body, name=f"pulse-step-{tid}", daemon=True)
        step._thread.start()
        return step

    def retry(
        self,
        previous: TrainStep | Mapping[str, Any],
        command: Sequence[str] | None = None,
        target: Callable[[TrainingRun], object] | None = None,
        **options: Any,
    ) -> TrainStep:
        """Start the next attempt of a step: a new run linked to the same flow step."""
        if isinstance(previous, TrainStep):
            link = previous.link
        else:
            link = FlowLink(
                previous.get("flow_id"), previous.get("flow_run_id"), previous.get("flow_step_id")
            )
        attempts = [
            r.get("attempt") or 1
            for r in self.records(flow_run_id=link.flow_run_id)
            if r.get("flow_step_id") == link.flow_step_id
        ]
        attempt = max(attempts, default=link.attempt or 1) + 1
        common = {
            "flow_id": link.flow_id,
            "flow_run_id": link.flow_run_id,
            "flow_step_id": link.flow_step_id,
            "attempt": attempt,
            **options,
        }
        if command is not None:
            return self.start_process(command, **common)
        if target is not None:
            return self.start_callable(target, **common)
        raise ValueError("retry needs the command or the callable to run again")

    # -- history -------------------------------------------------------------------

    def _liveness(self, state: RunState) -> Liveness:
        tid = state.training_id
        return run_liveness(
            state,
            now=time.time(),
            writer=check_writer(self.home, tid, state) if tid else None,
            **self.config.thresholds,
        )

    def _load(self, training_id: str) -> tuple[RunState, Liveness, str]:
        """A run's state, liveness and where it was read, from the source."""
        if isinstance(self.source, FileSource):
            # The log as it is now (a supervisor may be between writers), even if absent.
            state = read_state(self.home, training_id)
            return state, self._liveness(state), str(log_path(self.home, training_id))
        try:
            found = self.source.load(training_id)
        except RunNotFound:
            empty = RunState(training_id=training_id)
            return empty, self._liveness(empty), ""
        return found.state, found.liveness, found.where

    def record(self, training_id: str, step: TrainStep | None = None) -> dict[str, Any]:
        """The Flow History record of one run (with the step's view when known)."""
        state, live, where = self._load(training_id)
        if step is not None and not step.finished and live == "lost":
            live = "alive"  # the supervisor is between writers
        record = self._record(state, live, where)
        if step is not None:
            record["step"] = {
                "started_at": step.started_at,
                "ended_at": step.ended_at,
                "exit_code": step.outcome.exit_code if step.outcome else None,
            }
        return record

    def _record(self, state: RunState, live: Liveness, where: str) -> dict[str, Any]:
        record = to_history_record(state, liveness=live, now=time.time())
        record["liveness"] = live
        record["log_path"] = where
        return record

    def records(
        self, *, flow_run_id: str | None = None, flow_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Flow History records of the runs of a flow run or a flow, newest first."""
        try:
            found = self.source.runs()
        except HomeNotFound:
            return []
        out = []
        for found_run in found:
            meta = found_run.state.meta
            if meta is None:
                continue
            if flow_run_id is not None and meta.flow_run_id != flow_run_id:
                continue
            if flow_id is not None and meta.flow_id != flow_id:
                continue
            out.append(self._record(found_run.state, found_run.liveness, found_run.where))
        if isinstance(self.source, FileSource):
            # Runs removed by retention keep their record (pulse_transports.retention).
            for record in removed_records(self.home):
                if flow_run_id is not None and record.get("flow_run_id") != flow_run_id:
                    continue
                if flow_id is not None and record.get("flow_id") != flow_id:
                    continue
                out.append(record)
        out.sort(key=lambda r: r.get("started_at") or 0.0, reverse=True)
        return out

    def drill_down(self, training_id: str) -> dict[str, Any]:
        """Everything about one run: view (timeline, errors), record and metric history."""
        state, live, _where = self._load(training_id)
        return {
            "record": self.record(training_id),
            "view": to_view(state, now=time.time(), liveness=live),
            "metric_history": to_metric_history(state),
        }
