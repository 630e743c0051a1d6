"""The training processes of the truth matrix: ``python scenario.py NAME``.

Each scenario trains a tiny fake model through the public API and ends the
way its name says (cleanly, by an exception, a signal, ``os._exit``, ...).
The run's id, home and transports come from the environment the test sets
(``PULSE_TRAINING_ID``, ``PULSE_HOME``, ``PULSE_TRANSPORTS``,
``PULSE_HUB_SOCKET``). A scenario that the test must act on mid-run prints
``READY`` on stdout and waits. Not a test module.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pulse_core.emitter import TrainingRun

EPOCHS = 2
STEPS = 3


def ready() -> None:
    """Tell the test the run is under way (it then signals or inspects us)."""
    print("READY", flush=True)


def train(run: TrainingRun, epochs: int = EPOCHS) -> None:
    """A few reported steps: the run is running with progress and a loss."""
    run.status("running")
    for epoch in range(1, epochs + 1):
        for step in range(1, STEPS + 1):
            run.progress(epoch=epoch, total_epochs=EPOCHS, step=step, total_steps=STEPS)
            run.metrics(loss=1.0 / (epoch * STEPS + step))
            time.sleep(0.01)


def settled(run: TrainingRun) -> None:
    """Let the writer thread write what was reported before the process dies abruptly.

    Sink I/O happens on the run's writer thread: a process that dies within
    milliseconds of a call may lose that call's line (a documented trade-off;
    liveness still says lost). The matrix checks that readers agree on what
    the log holds, so these scenarios die once it holds the run's progress.
    """
    run.flush(timeout=10)


def opened() -> TrainingRun:
    return TrainingRun(name=sys.argv[1], total_epochs=EPOCHS)


def clean_done() -> None:
    with opened() as run:
        train(run)


def exception() -> None:
    with opened() as run:
        train(run, 1)
        raise FileNotFoundError(2, "No such file or directory", "data/train.csv")


def keyboard_interrupt() -> None:
    with opened() as run:
        train(run, 1)
        raise KeyboardInterrupt


def memory_error() -> None:
    with opened() as run:
        train(run, 1)
        raise MemoryError("cannot allocate 64 GiB")


def wait_for_kill() -> None:
    """Open a run outside any ``with``, train a little, then wait to be signalled."""
    run = opened()
    train(run, 1)
    settled(run)  # killed within ms of READY: the sinks hold what was reported
    ready()
    time.sleep(120)
    run.close()


def exit_0() -> None:
    run = opened()
    train(run, 1)
    settled(run)
    os._exit(0)


def exit_1() -> None:
    run = opened()
    train(run, 1)
    settled(run)
    os._exit(1)


def abort() -> None:
    run = opened()
    train(run, 1)
    settled(run)
    os.abort()


def thread_death() -> None:
    """The thread that opened the run dies; a non-daemon thread keeps the process up."""
    keeper_stop = threading.Event()

    def keeper() -> None:
        keeper_stop.wait(60.0)

    def trainer() -> None:
        run = opened()
        train(run, 1)
        raise RuntimeError("the training thread died")

    threading.Thread(target=keeper, name="keeper").start()
    worker = threading.Thread(target=trainer, name="trainer")
    worker.start()
    worker.join()
    ready()  # the process lives on: readers are checked now
    keeper_stop.wait(60.0)
    keeper_stop.set()


def _fork_child(child: Callable[[TrainingRun], None]) -> None:
    """Fork with the run open; the child ends as *child* says, the parent trains on."""
    with opened() as run:
        train(run, 1)
        pid = os.fork()
        if pid == 0:
            child(run)  # exits or raises through this with block, in the child only
        os.waitpid(pid, 0)
        train(run, 1)


def fork_exit() -> None:
    def child(run: TrainingRun) -> None:
        run.progress(epoch=1, step=99, total_steps=STEPS)
        sys.exit(0)

    _fork_child(child)


def fork_raise() -> None:
    def child(run: TrainingRun) -> None:
        run.progress(epoch=1, step=99, total_steps=STEPS)
        raise RuntimeError("the forked child failed")

    _fork_child(child)


def _loader(fail_at: int | None = None) -> Iterator[int]:
    for i in range(STEPS):
        if fail_at is not None and i == fail_at:
            raise FileNotFoundError(2, "No such file or directory", "data/shard-1.bin")
        time.sleep(0.01)
        yield i


def track_body() -> None:
    from pulse_transports.integrations import track

    for epoch in track(range(EPOCHS)):
        for _ in track(_loader()):
            if epoch == 1:
                raise FileNotFoundError(2, "No such file or directory", "data/val.csv")


def track_loader() -> None:
    from pulse_transports.integrations import track

    for epoch in track(range(EPOCHS)):
        for _ in track(_loader(fail_at=1 if epoch == 1 else None)):
            pass


def track_interrupt() -> None:
    from pulse_transports.integrations import track

    for epoch in track(range(EPOCHS)):
        for step in track(_loader()):
            if epoch == 1 and step == 1:
                raise KeyboardInterrupt


def track_single() -> None:
    from pulse_transports.integrations import track

    for step in track(range(STEPS * 2)):
        time.sleep(0.01)
        if step == STEPS:
            raise RuntimeError("diverged: loss is nan")


def log_deleted() -> None:
    """The run's log is deleted mid-run; the run goes on and ends done."""
    with opened() as run:
        train(run, 1)
        log = Path(os.environ["PULSE_HOME"]) / "logs" / "training" / f"{run.training_id}.jsonl"
        log.unlink()
        run.status("cooling_down", "saving the model")
        train(run, 1)


def id_reuse() -> None:
    """A finished run's id is used again: the second run is refused at construction."""
    with opened() as run:
        train(run)
    try:
        again = opened()
    except Exception as exc:  # noqa: BLE001 - the expected refusal is RunExists
        print(f"REFUSED {type(exc).__name__}: {exc}", flush=True)
        return
    train(again, 1)
    again.status("error", "this run should never have been accepted")
    again.close()
    print("ACCEPTED", flush=True)


SCENARIOS: dict[str, Callable[[], None]] = {
    "clean_done": clean_done,
    "exception": exception,
    "keyboard_interrupt": keyboard_interrupt,
    "memory_error": memory_error,
    "sigkill": wait_for_kill,
    "exit_0": exit_0,
    "exit_1": exit_1,
    "abort": abort,
    "thread_death": thread_death,
    "fork_exit": fork_exit,
    "fork_raise": fork_raise,
    "track_body": track_body,
    "track_loader": track_loader,
    "track_interrupt": track_interrupt,
    "track_single": track_single,
    "log_deleted": log_deleted,
    "id_reuse": id_reuse,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
