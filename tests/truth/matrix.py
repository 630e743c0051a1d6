"""The truth matrix: for every way a run can end, what every reader must show.

This module owns the table, and only the table: plain data with no import
beyond the standard library, so ``docs/gen_pages.py`` can load it by path and
write it into ``docs/concepts/liveness.md`` at build time (the docs cannot
drift from the test). :mod:`truthkit` runs the scenarios and reads the
readers; ``test_truth_matrix.py`` compares.

The expectations are the truth -- what happened to the run -- not what some
version of the code happens to print. Each reader is checked in its own
vocabulary:

* ``pulse ls --json``, ``/api/runs``: the row's ``status``, ``liveness`` and
  ``error.error_code`` (and ``progress``: 1.0 for a run that is done);
* ``pulse show --json``: ``view.status``, ``liveness``, ``history.outcome``
  and ``v1.status`` (and ``view.progress.fraction``: 1.0 for a run that is done);
* ``pulse v1 --json`` and the raw ``training_status.json``: the v1
  ``status`` (a lost run is ``error`` with a message starting
  ``training process lost``);
* a hub subscriber: the run's status and liveness as the hub pushes them;
* ``FlowTrainer.records()`` (runs with a flow link): ``outcome`` and
  ``error.error_code``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Final

#: An error code the matrix does not pin (another issue decides its name).
ANY: Final = "*"

#: The readers, in the order of the docs' columns.
LS: Final = "pulse ls"
SHOW: Final = "pulse show"
V1: Final = "pulse v1"
V1_FILE: Final = "training_status.json"
HUB: Final = "hub subscriber"
API: Final = "/api/runs"
FLOW: Final = "FlowTrainer.records()"
READERS: Final = (LS, SHOW, V1, V1_FILE, HUB, API, FLOW)

_OUTCOME: Final = {"done": "success", "error": "error", "cancelled": "cancelled"}
LOST_PREFIX: Final = "training process lost"


@dataclass(frozen=True)
class Truth:
    """What happened to a run, in the v2 vocabulary.

    Attributes:
        status: the lifecycle status the run really has.
        liveness: ``alive``, ``lost`` or ``ended``.
        error_code: the last error's code for an ``error`` run (:data:`ANY`:
            any code), else None.
        error_mentions: text the last error's message must contain (checked
            in ``pulse ls``), or None.
    """

    status: str
    liveness: str
    error_code: str | None = None
    error_mentions: str | None = None

    @property
    def outcome(self) -> str:
        """The Flow History outcome."""
        if self.status in _OUTCOME:
            return _OUTCOME[self.status]
        return "lost" if self.liveness == "lost" else "running"

    @property
    def v1_status(self) -> str:
        """The v1 snapshot's status: a lost run is an error there."""
        return "error" if self.liveness == "lost" else self.status


@dataclass(frozen=True)
class Scenario:
    """One way a run goes, run as real processes.

    Attributes:
        name: the id (also the argument of ``scenario.py``).
        what: one line for the docs.
        truth: what every reader must show.
        kind: ``script`` (``scenario.py NAME``), ``pulse_run`` (``pulse run
            -- child``, the child never reports) or ``torchrun``.
        action: ``exit`` (wait for the process to end), ``kill`` (on READY
            send *signal*, to the child for ``pulse_run``) or ``alive`` (on
            READY read while it still runs).
        signal: the signal of a ``kill``.
        child: the non-reporting child of a ``pulse_run`` scenario.
        stdout: text the scenario process must print (e.g. a refusal).
    """

    name: str
    what: str
    truth: Truth
    kind: str = "script"
    action: str = "exit"
    signal: int | None = None
    child: tuple[str, ...] = ()
    stdout: str | None = None
    readers: tuple[str, ...] = field(default=(LS, SHOW, V1, V1_FILE, HUB, API))


ENDED_DONE: Final = Truth("done", "ended")
LOST_RUNNING: Final = Truth("running", "lost")
_FLOW_READERS: Final = (*READERS,)

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("clean_done", "the loop finishes inside `with TrainingRun()`", ENDED_DONE),
    Scenario(
        "exception",
        "the code raises `FileNotFoundError`",
        Truth("error", "ended", "DATASET_NOT_FOUND"),
    ),
    Scenario("keyboard_interrupt", "Ctrl-C (`KeyboardInterrupt`)", Truth("cancelled", "ended")),
    Scenario("memory_error", "`MemoryError`", Truth("error", "ended", "OUT_OF_MEMORY")),
    Scenario(
        "sigkill",
        "the process is killed with SIGKILL",
        LOST_RUNNING,
        action="kill",
        signal=signal.SIGKILL,
    ),
    Scenario("exit_0", "`os._exit(0)` with the run open", LOST_RUNNING),
    Scenario("exit_1", "`os._exit(1)` with the run open", LOST_RUNNING),
    Scenario("abort", "`os.abort()` (SIGABRT)", LOST_RUNNING),
    Scenario(
        "thread_death",
        "the thread that opened the run dies; another thread keeps the process up",
        Truth("error", "ended", "UNHANDLED_EXCEPTION"),
        action="alive",
    ),
    Scenario("fork_exit", "a forked child exits; the parent finishes", ENDED_DONE),
    Scenario("fork_raise", "a forked child raises; the parent finishes", ENDED_DONE),
    Scenario(
        "track_body",
        "`track()` nested loops, the loop body raises `FileNotFoundError`",
        Truth("error", "ended", "DATASET_NOT_FOUND"),
    ),
    Scenario(
        "track_loader",
        "`track()` nested loops, the loader raises `FileNotFoundError`",
        Truth("error", "ended", "DATASET_NOT_FOUND"),
    ),
    Scenario(
        "track_interrupt",
        "`track()` nested loops, Ctrl-C in the body",
        Truth("cancelled", "ended"),
    ),
    Scenario(
        "track_single",
        "`track()`, one loop, the body raises `RuntimeError`",
        Truth("error", "ended", "UNHANDLED_EXCEPTION"),
    ),
    Scenario(
        "run_alive",
        "`pulse run -- CMD`, CMD does not report, read while it runs",
        Truth("running", "alive"),
        kind="pulse_run",
        action="alive",
        child=("sh", "-c", "echo READY; exec sleep 60"),
        readers=_FLOW_READERS,
    ),
    Scenario(
        "run_exit_0",
        "`pulse run -- CMD`, CMD does not report and exits 0",
        ENDED_DONE,
        kind="pulse_run",
        child=("sh", "-c", "sleep 0.5"),
        readers=_FLOW_READERS,
    ),
    Scenario(
        "run_exit_1",
        "`pulse run -- CMD`, CMD does not report and exits 1",
        Truth("error", "ended", "PROCESS_CRASHED"),
        kind="pulse_run",
        child=("sh", "-c", "sleep 0.5; exit 1"),
        readers=_FLOW_READERS,
    ),
    Scenario(
        "run_sigkill",
        "`pulse run -- CMD`, CMD does not report and is SIGKILLed",
        Truth("error", "ended", "PROCESS_CRASHED"),
        kind="pulse_run",
        action="kill",
        signal=signal.SIGKILL,
        child=("sh", "-c", 'echo $$ > "$TRUTH_PIDFILE"; echo READY; exec sleep 60'),
        readers=_FLOW_READERS,
    ),
    Scenario(
        "torchrun_rank_sigkill",
        "torchrun, 2 CPU ranks (gloo): rank 1 is SIGKILLed",
        Truth("error", "ended", ANY, error_mentions="rank 1"),
        kind="torchrun",
        action="kill",
        signal=signal.SIGKILL,
    ),
    Scenario(
        "log_deleted",
        "the run's log is deleted mid-run; the run finishes",
        ENDED_DONE,
    ),
    Scenario(
        "id_reuse",
        "a finished run's id is opened again: `RunExists`, the old run unchanged",
        ENDED_DONE,
        stdout="REFUSED RunExists",
    ),
)


def expected(scenario: Scenario, reader: str) -> dict[str, object]:
    """What *reader* must show for *scenario*, in the reader's own fields."""
    t = scenario.truth
    code = t.error_code if t.status == "error" else None
    # A run that is done is at 100 % wherever progress is shown.
    done = {"progress": 1.0} if t.status == "done" else {}
    if reader in (LS, API):
        out: dict[str, object] = {
            "status": t.status,
            "liveness": t.liveness,
            "error_code": code,
            **done,
        }
        if reader == LS and t.error_mentions is not None:
            out["error_mentions"] = t.error_mentions
        return out
    if reader == SHOW:
        return {
            "status": t.status,
            "liveness": t.liveness,
            "outcome": t.outcome,
            "v1_status": t.v1_status,
            **done,
        }
    if reader in (V1, V1_FILE):
        out = {"status": t.v1_status}
        if t.liveness == "lost":
            out["lost_message"] = True
        return out
    if reader == HUB:
        return {"status": t.status, "liveness": t.liveness}
    if reader == FLOW:
        return {"outcome": t.outcome, "error_code": code}
    raise ValueError(f"unknown reader {reader!r}")


def matches(want: dict[str, object], got: dict[str, object]) -> bool:
    """True if every expected field is what the reader showed.

    :data:`ANY` matches any code; ``error_mentions`` is looked for in the
    reader's ``error_message``.
    """
    for key, value in want.items():
        if key == "error_mentions":
            if str(value) not in str(got.get("error_message") or ""):
                return False
        elif value == ANY:
            if not got.get(key):
                return False
        elif got.get(key) != value:
            return False
    return True


def cell(scenario: Scenario, reader: str) -> str:
    """The docs' text of one cell: what *reader* shows for *scenario*."""
    if reader not in scenario.readers:
        return "--"
    want = expected(scenario, reader)
    if reader in (V1, V1_FILE):
        text = str(want["status"])
        return f"{text} (lost)" if want.get("lost_message") else text
    if reader == FLOW:
        code = want["error_code"]
        if code:
            return f"{want['outcome']} " + ("(any code)" if code == ANY else f"`{code}`")
        return str(want["outcome"])
    text = f"{want['status']}{' 100 %' if 'progress' in want else ''} / {want['liveness']}"
    code = want.get("error_code")
    if code:
        text += " (any code)" if code == ANY else f" `{code}`"
    if "error_mentions" in want:
        text += f", naming {want['error_mentions']}"
    if reader == SHOW:
        text += f", outcome {want['outcome']}"
    return text


def markdown() -> str:
    """The matrix as a Markdown table (scenario x reader), for the docs."""
    head = "| scenario | " + " | ".join(f"`{r}`" for r in READERS) + " |"
    rule = "|---" * (len(READERS) + 1) + "|"
    rows = [f"| {s.what} | " + " | ".join(cell(s, r) for r in READERS) + " |" for s in SCENARIOS]
    return "\n".join([head, rule, *rows])
