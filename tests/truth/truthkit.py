"""Run the truth matrix's scenarios as real processes and read every reader.

This module owns the machinery behind ``test_truth_matrix.py`` and
``tests/bench/bench_truth.py``: one ``pulse serve --http`` hub per matrix on a
shared home, one scenario home per scenario, the scenario processes (plain
scripts, ``pulse run``, torchrun), and one function per reader that answers
in the fields :func:`matrix.expected` names.

Homes: every scenario needs its own ``training_status.json`` (the v1 file is
one per home) while the hub must see every run's log and lock. So each
scenario home's ``logs/training`` is a symlink to the hub home's: logs and
locks land where the hub reads them, the v1 file stays per scenario.

Producers reach the hub only through the ``socket`` transport today, so the
scenario processes run with ``PULSE_TRANSPORTS=file,v1,socket`` (another
issue makes the socket default; drop the override then).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from matrix import API, FLOW, HUB, LOST_PREFIX, LS, SHOW, V1, V1_FILE, Scenario, expected, matches

from pulse_core.events import TERMINAL_STATUSES, Event, StatusChanged
from pulse_transports.hubtoken import read_token
from pulse_transports.subscribe import HubDisconnected, Snapshot, Subscriber

HERE = Path(__file__).parent
SCENARIO = HERE / "scenario.py"
RANK_WORKER = HERE / "rank_worker.py"
#: Longest wait for one reader to show the truth, seconds.
READ_WAIT = 10.0
#: Longest a scenario process may take to end (torchrun included).
PROCESS_WAIT = 90.0
#: The transports of every scenario process (see the module doc).
TRANSPORTS = "file,v1,socket"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run ``pulse ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "pulse_transports.cli", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class HubServer:
    """A ``pulse serve --http`` process on *home* (Unix socket ``<home>/pulse.sock``)."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        (home / "logs" / "training").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out_path = home.parent / "hub.out"
        self.err_path = home.parent / "hub.err"
        cmd = [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(home)]
        cmd += ["--http", f"127.0.0.1:{self.port}"]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.socket_path = home / "pulse.sock"

    def wait_ready(self, timeout: float = 20.0) -> HubServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening on" in self.out_path.read_text():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited: {self.err_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"the hub did not start: {self.err_path.read_text()}")

    def api_runs(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/runs?limit=1000"
        # As a user's local client: the token the hub wrote to its home.
        bearer = {"Authorization": f"Bearer {read_token(self.home)}"}
        request = urllib.request.Request(url, headers=bearer)
        with urllib.request.urlopen(request, timeout=10) as response:
            rows = orjson.loads(response.read())["runs"]
        assert isinstance(rows, list)
        return rows

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class HubWatch:
    """A hub subscriber of one run, connected before the run starts.

    It keeps what a UI built on the subscription would show: the status
    and liveness of the latest snapshot, moved on by the events that follow
    (a status event sets the status; any event of a run not ended means it
    is alive; a terminal status means ended).
    """

    def __init__(self, socket_path: Path, training_id: str) -> None:
        self.training_id = training_id
        self.sub = Subscriber(path=socket_path, training_id=training_id, reconnect=True)
        self.state: dict[str, Any] = {}
        self.changes: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sub.connect()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sub.recv(timeout=0.2)
            except HubDisconnected:
                return
            if message is not None:
                self._apply(message)

    def _apply(self, message: object) -> None:
        with self._lock:
            state = dict(self.state)
            if isinstance(message, Snapshot) and message.training_id == self.training_id:
                view = message.view
                state = {"status": view.get("status"), "liveness": view.get("liveness")}
            elif isinstance(message, Event) and message.training_id == self.training_id:
                if isinstance(message, StatusChanged):
                    state["status"] = message.status
                ended = state.get("status") in TERMINAL_STATUSES
                state["liveness"] = "ended" if ended else "alive"
            else:
                return
            if state != self.state:
                self.state = state
                self.changes.append((time.monotonic(), state))

    def read(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.state)

    def close(self) -> None:
        self._stop.set()
        self.sub.close()
        self._thread.join(5)


@dataclass
class Outcome:
    """What one scenario gave: per reader the expected and the observed fields."""

    scenario: Scenario
    training_id: str
    cells: dict[str, tuple[dict[str, object], dict[str, object]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """One line per reader that did not show the truth, and per failed note."""
        out = [
            f"{reader}: expected {want}, got {got}"
            for reader, (want, got) in self.cells.items()
            if not matches(want, got)
        ]
        return out + self.notes


@dataclass
class Context:
    """Where a scenario runs: the shared hub and this scenario's home and id."""

    hub: HubServer
    home: Path
    training_id: str
    flow_run_id: str
    watch: HubWatch | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("PULSE_TRAINING_ID", "PULSE_FLOW_RUN_ID", "PULSE_FLOW_ID"):
            env.pop(key, None)
        env.update(
            PULSE_HOME=str(self.home),
            PULSE_TRAINING_ID=self.training_id,
            PULSE_TRANSPORTS=TRANSPORTS,
            PULSE_HUB_SOCKET=str(self.hub.socket_path),
            TRUTH_PIDFILE=str(self.home / "child.pid"),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


def scenario_home(root: Path, hub_home: Path, name: str) -> Path:
    """A home of its own whose ``logs/training`` is the hub home's (see the module doc)."""
    home = root / name
    (home / "logs").mkdir(parents=True, exist_ok=True)
    link = home / "logs" / "training"
    if not link.exists():
        link.symlink_to(hub_home / "logs" / "training", target_is_directory=True)
    return home


def training_id_for(name: str) -> str:
    """A fresh, valid training id for a scenario."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    digest = format(abs(hash((name, time.monotonic_ns()))) % 16**10, "010x")
    return f"{stamp}-000-{digest}"


# -- readers -------------------------------------------------------------------


def _cli_json(*args: str) -> Any:
    result = cli(*args)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return {"error": f"exit {result.returncode}: {' '.join(tail)}"}
    return orjson.loads(result.stdout)


def _code(error: Any) -> Any:
    return error.get("error_code") if isinstance(error, dict) else None


def read_ls(ctx: Context) -> dict[str, object]:
    doc = _cli_json("ls", "--json", "--home", str(ctx.home))
    if "error" in doc:
        return dict(doc)
    for row in doc["runs"]:
        if row["training_id"] == ctx.training_id:
            return {
                "status": row["status"],
                "liveness": row["liveness"],
                "error_code": _code(row.get("error")),
                "error_message": (row.get("error") or {}).get("message"),
                "progress": row.get("progress"),
            }
    return {"error": "no such row"}


def read_show(ctx: Context) -> dict[str, object]:
    doc = _cli_json("show", ctx.training_id, "--json", "--home", str(ctx.home))
    if "error" in doc:
        return dict(doc)
    return {
        "status": doc["view"]["status"],
        "liveness": doc["liveness"],
        "outcome": doc["history"]["outcome"],
        "v1_status": doc["v1"]["status"],
        "progress": doc["view"]["progress"]["fraction"],
    }


def _v1_fields(snapshot: Any) -> dict[str, object]:
    if not isinstance(snapshot, dict) or "status" not in snapshot:
        return {"error": f"not a v1 snapshot: {snapshot!r}"}
    message = str(snapshot.get("message") or "")
    return {"status": snapshot["status"], "lost_message": message.startswith(LOST_PREFIX)}


def read_v1(ctx: Context) -> dict[str, object]:
    doc = _cli_json("v1", ctx.training_id, "--json", "--home", str(ctx.home))
    return dict(doc) if "error" in doc else _v1_fields(doc)


def read_v1_file(ctx: Context) -> dict[str, object]:
    try:
        return _v1_fields(orjson.loads((ctx.home / "training_status.json").read_bytes()))
    except (OSError, orjson.JSONDecodeError) as exc:
        return {"error": str(exc)}


def read_hub(ctx: Context) -> dict[str, object]:
    assert ctx.watch is not None
    return ctx.watch.read()


def read_api(ctx: Context) -> dict[str, object]:
    try:
        rows = ctx.hub.api_runs()
    except OSError as exc:
        return {"error": str(exc)}
    for row in rows:
        if row.get("training_id") == ctx.training_id:
            return {
                "status": row["status"],
                "liveness": row["liveness"],
                "error_code": _code(row.get("error")),
                "progress": row.get("progress"),
            }
    return {"error": "no such row"}


def read_flow(ctx: Context) -> dict[str, object]:
    from pulse_transports.flows import FlowTrainer

    records = FlowTrainer(home=ctx.home).records(flow_run_id=ctx.flow_run_id)
    if not records:
        return {"error": "no record"}
    record = records[0]
    return {"outcome": record["outcome"], "error_code": _code(record.get("error"))}


READ: dict[str, Callable[[Context], dict[str, object]]] = {
    LS: read_ls,
    SHOW: read_show,
    V1: read_v1,
    V1_FILE: read_v1_file,
    HUB: read_hub,
    API: read_api,
    FLOW: read_flow,
}


def poll_readers(
    scenario: Scenario, ctx: Context, wait: float = READ_WAIT
) -> dict[str, tuple[dict[str, object], dict[str, object]]]:
    """Read every reader of *scenario* until it shows the truth or *wait* is over."""
    pending = {r: expected(scenario, r) for r in scenario.readers}
    cells: dict[str, tuple[dict[str, object], dict[str, object]]] = {}
    deadline = time.monotonic() + wait
    delay = 0.25
    while pending:
        for reader in list(pending):
            want = pending[reader]
            try:
                got = READ[reader](ctx)
            except Exception as exc:  # noqa: BLE001 - a reader's crash is a failed cell, not a lost matrix
                got = {"error": f"{type(exc).__name__}: {exc}"}
            cells[reader] = (want, got)
            if matches(want, got):
                del pending[reader]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    return cells


# -- scenario processes --------------------------------------------------------


def command(scenario: Scenario, ctx: Context) -> list[str]:
    """The process that plays *scenario*."""
    if scenario.kind == "script":
        return [sys.executable, str(SCENARIO), scenario.name]
    if scenario.kind == "pulse_run":
        return [
            sys.executable,
            "-m",
            "pulse_transports.cli",
            "run",
            "--home",
            str(ctx.home),
            "--training-id",
            ctx.training_id,
            "--flow-id",
            "truth",
            "--flow-run-id",
            ctx.flow_run_id,
            "--flow-step-id",
            "train",
            "--",
            *scenario.child,
        ]
    if scenario.kind == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(RANK_WORKER),
        ]
    raise ValueError(f"unknown kind {scenario.kind!r}")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def started(scenario: Scenario, ctx: Context) -> Iterator[subprocess.Popen[bytes]]:
    """Start the scenario's process group; it is SIGKILLed on the way out if still there."""
    out = ctx.home / "scenario.out"
    err = ctx.home / "scenario.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            command(scenario, ctx),
            stdout=o,
            stderr=e,
            env=ctx.env(),
            cwd=ctx.home,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def play(scenario: Scenario, ctx: Context, proc: subprocess.Popen[bytes]) -> None:
    """Drive the process to the point where the readers are read."""
    out = ctx.home / "scenario.out"
    pidfile = ctx.home / "child.pid"

    def ready() -> bool:
        if scenario.kind == "torchrun" or (scenario.kind == "pulse_run" and scenario.signal):
            return _pid_from(pidfile) is not None
        return b"READY" in out.read_bytes()

    if scenario.action == "exit":
        proc.wait(PROCESS_WAIT)
        return
    _wait_for(lambda: ready() or proc.poll() is not None, PROCESS_WAIT, f"{scenario.name} READY")
    if proc.poll() is not None and not ready():
        raise AssertionError(f"{scenario.name} ended before READY: {proc.returncode}")
    if scenario.action == "kill":
        assert scenario.signal is not None
        pid = proc.pid if scenario.kind == "script" else _pid_from(pidfile)
        assert pid is not None
        os.kill(pid, scenario.signal)
        proc.wait(PROCESS_WAIT)


def run_scenario(scenario: Scenario, hub: HubServer, root: Path) -> Outcome:
    """Play one scenario against the shared hub and read every reader."""
    home = scenario_home(root, hub.home, scenario.name)
    ctx = Context(hub, home, training_id_for(scenario.name), f"fr-{scenario.name}")
    outcome = Outcome(scenario, ctx.training_id)
    ctx.watch = HubWatch(hub.socket_path, ctx.training_id)
    try:
        with started(scenario, ctx) as proc:
            play(scenario, ctx, proc)
            outcome.cells = poll_readers(scenario, ctx)
            if scenario.action == "alive" and proc.poll() is not None:
                outcome.notes.append(f"the process ended ({proc.returncode}) before it was read")
        stdout = (home / "scenario.out").read_text(errors="replace")
        if scenario.stdout is not None and scenario.stdout not in stdout:
            outcome.notes.append(f"stdout lacks {scenario.stdout!r}: {stdout[-300:]!r}")
    except Exception as exc:  # noqa: BLE001 - one scenario's failure is its own, not the matrix's
        outcome.notes.append(f"scenario failed: {type(exc).__name__}: {exc}")
    finally:
        ctx.watch.close()
    return outcome


@contextlib.contextmanager
def matrix_root() -> Iterator[tuple[Path, HubServer]]:
    """A short temporary root (Unix socket paths are limited) with a running hub."""
    root = Path(tempfile.mkdtemp(prefix="tr-"))
    hub = HubServer(root / "hub")
    try:
        yield root, hub.wait_ready()
    finally:
        hub.stop()
        shutil.rmtree(root, ignore_errors=True)


def play_all(workers: int = 4, names: tuple[str, ...] = ()) -> list[Outcome]:
    """Play every scenario (or those *names*) against one hub, *workers* at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from matrix import SCENARIOS

    chosen = [s for s in SCENARIOS if not names or s.name in names]
    order = sorted(chosen, key=lambda s: s.kind != "torchrun")  # the slowest first
    with matrix_root() as (root, hub), ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run_scenario, s, hub, root) for s in order]
        done = {f.result().scenario.name: f.result() for f in futures}
    return [done[s.name] for s in chosen]


def report(outcomes: list[Outcome]) -> str:
    """A plain-text table of every cell: ``ok`` or what the reader showed instead."""
    lines = []
    for outcome in outcomes:
        lines.append(f"{outcome.scenario.name} ({outcome.training_id})")
        for reader, (want, got) in outcome.cells.items():
            verdict = "ok  " if matches(want, got) else "FAIL"
            detail = "" if verdict == "ok  " else f" want {want} got {got}"
            lines.append(f"  {verdict} {reader}{detail}")
        lines.extend(f"  FAIL {note}" for note in outcome.notes)
    return "\n".join(lines)


if __name__ == "__main__":
    # python tests/truth/truthkit.py [SCENARIO...]: the matrix's cells as text.
    sys.stdout.write(report(play_all(names=tuple(sys.argv[1:]))) + "\n")
