"""track(): hand-written loops report epochs and steps, cheaply, to the right run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import Progress
from pulse_core.state import RunState
from pulse_core.testing import RecordingSink
from pulse_transports.integrations import tracking
from pulse_transports.integrations.tracking import current_run, set_current_run, track


class CountingRun:
    """Stands in for a run and keeps every progress call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.closed = False
        self.current_status = "running"
        self.failures: list[BaseException] = []

    def progress(self, **values: Any) -> None:
        self.calls.append(values)

    def fail_with(self, exc: BaseException) -> None:
        self.failures.append(exc)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recorded() -> Iterator[tuple[TrainingRun, RecordingSink]]:
    """A run on a recording sink (no background thread), closed at the end."""
    sink = RecordingSink()
    run = TrainingRun(sinks=[sink], background=False, env={})
    yield run, sink
    run.close()


def _progress(sink: RecordingSink) -> list[tuple[int | None, int | None]]:
    return [(p.epoch, p.step) for p in sink.of_type(Progress)]


class TestLevels:
    """Epoch and step loops report the protocol's progress fields."""

    def test_step_loop(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """A single loop reports step = iterations done and total_steps = len()."""
        run, sink = recorded
        items = list(track(range(7), run=run))
        assert items == list(range(7))
        last = sink.of_type(Progress)[-1]
        assert (last.step, last.total_steps, last.epoch) == (7, 7, None)

    def test_nested_loops_become_epochs(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """An outer loop around a step loop reports 1-based epochs and their total."""
        run, sink = recorded
        for _ in track(range(3), run=run):
            for _ in track(range(4)):
                pass
        last = sink.of_type(Progress)[-1]
        assert (last.epoch, last.total_epochs, last.step, last.total_steps) == (3, 3, 4, 4)
        seen = _progress(sink)
        assert (2, 0) in seen
        assert (3, 0) in seen

    def test_explicit_epoch_unit(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """unit="epoch" reports each epoch as it starts, with step 0."""
        run, sink = recorded
        for _ in track(range(2), unit="epoch", run=run):
            pass
        assert _progress(sink) == [(1, 0), (2, 0)]

    def test_third_level_is_silent(self) -> None:
        """A loop inside the step loop iterates without reporting."""
        run = CountingRun()
        for _ in track(range(2), unit="epoch", run=run):  # type: ignore[arg-type]
            for _ in track(range(2)):
                inner = track(range(3))
                assert list(inner) == [0, 1, 2]
                assert inner.role == "silent"
        assert all(c.get("step", 0) <= 2 for c in run.calls)

    def test_unsized_iterable(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """A generator has no total; steps are still counted."""
        run, sink = recorded
        for _ in track((i for i in range(5)), run=run):
            pass
        last = sink.of_type(Progress)[-1]
        assert (last.step, last.total_steps) == (5, None)

    def test_len_and_total(self) -> None:
        """len() is the total, given or taken from the iterable."""
        assert len(track(range(9))) == 9
        assert len(track(iter([1, 2]), total=2)) == 2
        with pytest.raises(TypeError):
            len(track(iter([1, 2])))


class TestRate:
    """Progress is reported every N iterations, N adapted to time."""

    def test_fast_loop_is_coalesced(self) -> None:
        """A fast 200,000-iteration loop makes far fewer progress calls than iterations."""
        run = CountingRun()
        for _ in track(range(200_000), run=run, interval=0.05):  # type: ignore[arg-type]
            pass
        assert len(run.calls) < 2_000
        assert run.calls[-1] == {"step": 200_000}

    def test_slow_loop_reports_every_iteration(self) -> None:
        """Iterations slower than the interval are each reported."""
        run = CountingRun()
        for _ in track(range(4), run=run, interval=0.0):  # type: ignore[arg-type]
            pass
        assert [c.get("step") for c in run.calls] == [0, 1, 2, 3, 4]

    def test_steps_never_go_back(self) -> None:
        """Reported steps only grow within a loop."""
        run = CountingRun()
        for _ in track(range(50_000), run=run, interval=0.001):  # type: ignore[arg-type]
            pass
        steps = [c["step"] for c in run.calls]
        assert steps == sorted(steps)


class TestRunChoice:
    """The run reported to: given, current, or opened by the outermost loop."""

    def test_given_run_is_left_open(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """A run passed in is not ended by the loop."""
        run, _ = recorded
        for _ in track(range(3), run=run):
            pass
        assert run.current_status == "running"

    def test_current_run(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """set_current_run() makes loops report there without being told."""
        run, sink = recorded
        set_current_run(run)
        try:
            assert current_run() is run
            for _ in track(range(3)):
                pass
        finally:
            set_current_run(None)
        assert sink.of_type(Progress)[-1].step == 3

    def test_only_open_run_is_current(self, recorded: tuple[TrainingRun, RecordingSink]) -> None:
        """With nothing set, the process's only open run is the current one."""
        run, _ = recorded
        assert current_run() is run
        run.close()
        assert current_run() is None

    def test_opened_on_demand(
        self,
        pulse_home: Path,
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """With no run anywhere, the outermost loop opens one and ends it done."""
        for _ in track(range(2), unit="epoch"):
            for _ in track(range(10)):
                pass
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "done"]
        assert (state.epoch, state.total_epochs, state.step, state.total_steps) == (2, 2, 10, 10)

    def test_break_ends_done(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Leaving an opened-on-demand loop with break ends its run done."""
        for index in track(range(10)):
            if index == 3:
                break
        (state,) = read_runs()
        assert (state.status, state.step) == ("done", 3)

    def test_failing_iterable(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """An iterable that raises ends the loop's own run with the error's code."""

        def shards() -> Iterator[int]:
            yield 1
            raise FileNotFoundError("shard-2")

        with pytest.raises(FileNotFoundError):
            for _ in track(shards()):
                pass
        (state,) = read_runs()
        assert (state.status, state.errors[0].error_code) == ("error", "DATASET_NOT_FOUND")

    def test_with_block_reports_body_exceptions(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """`with track(...) as bar:` ends the run with an exception raised in the loop body."""

        def train() -> None:
            with track(range(5)) as bar:
                for index in bar:
                    if index == 2:
                        raise RuntimeError("CUDA out of memory.")

        with pytest.raises(RuntimeError):
            train()
        (state,) = read_runs()
        assert (state.status, state.errors[0].error_code) == ("error", "CUDA_OOM")

    def test_threads_nest_separately(self) -> None:
        """A loop in another thread is not taken for an inner loop of this thread's."""
        run = CountingRun()
        roles: list[str] = []

        def other() -> None:
            inner = track(range(3), run=run)  # type: ignore[arg-type]
            list(inner)
            roles.append(inner.role)

        outer = track(range(2), run=run)  # type: ignore[arg-type]
        for _ in outer:
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        assert roles == ["step", "step"]
        assert outer.role == "step"
        assert tracking._stack() == []


TRACK_WORKER = Path(__file__).with_name("track_worker.py")


def _pulse(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``pulse`` command line on *home*."""
    script = Path(sys.executable).with_name("pulse")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from pulse_transports.cli import main; main()"]
    )
    env = {**os.environ, "PULSE_HOME": str(home)}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, env=env, check=True
    )


def _run_script(home: Path, scenario: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Run track_worker.py's *scenario* with the default sinks (file + v1).

    Returns:
        The exit status, ``pulse show --json`` of the one run, and the v1 file.
    """
    env = {**os.environ, "PULSE_HOME": str(home)}
    env.pop("PULSE_TRANSPORTS", None)  # the default sinks, v1 snapshot included
    proc = subprocess.Popen(
        [sys.executable, str(TRACK_WORKER), scenario],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if scenario.endswith("sigint"):
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    (log,) = (home / "logs" / "training").glob("*.jsonl")
    shown = orjson.loads(_pulse(home, "show", log.stem, "--json").stdout)
    v1 = orjson.loads((home / "training_status.json").read_bytes())
    return proc.returncode, shown, v1


class TestEndings:
    """A script using track() ends its run the way the script really ended (real processes)."""

    @pytest.mark.parametrize(
        ("scenario", "code"),
        [
            ("single-fnf", "DATASET_NOT_FOUND"),
            ("single-oom", "CUDA_OOM"),
            ("single-value", "UNHANDLED_EXCEPTION"),
            ("single-loader", "DATASET_NOT_FOUND"),
            ("nested-fnf", "DATASET_NOT_FOUND"),
            ("nested-oom", "CUDA_OOM"),
            ("nested-loader", "DATASET_NOT_FOUND"),
            ("zip-partner-raises", "DATASET_NOT_FOUND"),
        ],
    )
    def test_uncaught_exception_is_an_error(
        self, pulse_home: Path, scenario: str, code: str
    ) -> None:
        """An exception from the loop body or the loader ends the run error with its code."""
        status, shown, v1 = _run_script(pulse_home, scenario)
        assert status == 1
        view = shown["view"]
        assert (view["status"], view["last_error"]["error_code"]) == ("error", code)
        assert shown["history"]["outcome"] == "error"
        assert v1["status"] == "error"

    @pytest.mark.parametrize("scenario", ["single-interrupt", "nested-interrupt", "nested-sigint"])
    def test_interrupt_is_cancelled(self, pulse_home: Path, scenario: str) -> None:
        """KeyboardInterrupt (raised, or a real SIGINT) in the loop body ends the run cancelled."""
        status, shown, v1 = _run_script(pulse_home, scenario)
        assert status != 0
        assert shown["view"]["status"] == "cancelled"
        assert shown["view"]["errors"] == []
        assert v1["status"] == "cancelled"

    def test_caught_exception_is_never_done(self, pulse_home: Path) -> None:
        """A body exception the script catches outside the loops still does not end it done."""
        status, shown, v1 = _run_script(pulse_home, "caught-outside")
        assert status == 0
        assert shown["view"]["status"] == "error"
        assert v1["status"] == "error"

    @pytest.mark.parametrize(
        ("scenario", "epoch", "step"),
        [
            ("nested-break", 2, 2),
            ("nested-return", 2, 2),
            ("wrapped-break", None, 1),
            ("zip-truncated", 3, 2),
            ("kept-generator", None, 1),
        ],
    )
    def test_break_and_return_end_done(
        self, pulse_home: Path, scenario: str, epoch: int | None, step: int
    ) -> None:
        """Leaving the loops with break, return or a shorter zip() partner ends the run done."""
        status, shown, v1 = _run_script(pulse_home, scenario)
        assert status == 0
        view = shown["view"]
        assert view["status"] == "done"
        assert (view["progress"]["epoch"], view["progress"]["step"]) == (epoch, step)
        assert v1["status"] == "done"

    def test_unsized_inner_loop_has_no_total(self, pulse_home: Path) -> None:
        """An inner loader without a length never shows the outer loop's length as total_steps."""
        status, shown, _ = _run_script(pulse_home, "nested-unsized")
        assert status == 0
        progress = shown["view"]["progress"]
        assert (progress["epoch"], progress["total_epochs"]) == (2, 2)
        assert (progress["step"], progress["total_steps"]) == (4, None)


class TestImports:
    """The integrations package imports no framework until a framework module is used."""

    def test_lean_import(self) -> None:
        """Importing the package, track and the distributed helpers loads no ML framework."""
        code = (
            "import sys\n"
            "import pulse_transports.integrations as i\n"
            "i.track, i.open_run, i.rank_info\n"
            "heavy = {'torch', 'transformers', 'lightning', 'keras', 'tqdm', 'pytorch_lightning'}\n"
            "print(sorted(heavy & set(sys.modules)))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]"
