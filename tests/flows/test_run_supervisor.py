"""`pulse run` tells every reader the truth about its child: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse_core.codec import decode
from pulse_core.errors import ConfigError
from pulse_core.events import Progress
from pulse_transports.config import load_config
from pulse_transports.file import log_path, writer_alive
from pulse_transports.flows import FlowTrainer
from pulse_transports.hubtoken import read_token
from pulse_transports.supervise import (
    CHILD_LOG_INTERVAL,
    TAIL_BYTES,
    TAIL_LINES,
    FlowLink,
    bounded_tail,
    child_environment,
    classify_text,
    read_state,
)

CHILD = str(Path(__file__).with_name("child.py"))
PULSE = str(Path(sys.executable).with_name("pulse"))
#: Fast liveness for the tests: heartbeats every 0.5 s, stale after 2 s of silence.
FAST = {"PULSE_HEARTBEAT_INTERVAL": "0.5", "PULSE_STALE_AFTER": "2"}

CRASH_SCRIPT = """
import sys
print("epoch 1 loss 0.5", file=sys.stderr)
print("{noise}", file=sys.stderr)
open("/no/such/data/train.csv")
"""

LATE_CLAIM = """
import time
time.sleep(1.0)  # claims after the claim timeout (heavy imports, data loading)
from pulse_core import TrainingRun
with TrainingRun(total_epochs=1) as run:
    for step in range(1, 4):
        run.progress(epoch=1, step=step, total_steps=3)
        run.metrics(loss=1.0 / step)
        time.sleep(0.05)
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of the supervisor, its child and the readers."""
    monkeypatch.delenv("PULSE_TRANSPORTS", raising=False)
    monkeypatch.delenv("PULSE_TRANSPORT_OPTIONS", raising=False)
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def pulse(home: Path, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PULSE, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=dict(env),
    )


def readers(home: Path, training_id: str, env: Mapping[str, str]) -> dict[str, Any]:
    """What every reader says about one run right now."""
    listed = json.loads(pulse(home, "ls", "--json", env=env).stdout)
    row = next(r for r in listed["runs"] if r["training_id"] == training_id)
    shown = json.loads(pulse(home, "show", training_id, "--json", env=env).stdout)
    v1 = json.loads(pulse(home, "v1", training_id, "--json", env=env).stdout)
    raw = orjson.loads((home / "training_status.json").read_bytes())
    records = FlowTrainer(home=home).records(flow_run_id="fr")
    record = next(r for r in records if r["training_id"] == training_id)
    return {
        "ls": (row["status"], row["liveness"]),
        "show": (shown["view"]["status"], shown["view"]["liveness"]),
        "v1": v1["status"],
        "raw": raw["status"],
        "record": (record["outcome"], record["liveness"]),
        "error": shown["view"]["last_error"],
        "timeline": [t["status"] for t in shown["view"]["timeline"]],
    }


def web_row(home: Path, training_id: str, env: Mapping[str, str]) -> tuple[str, str]:
    """What ``GET /api/runs`` of a real ``pulse serve --http`` says about one run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = home.parent / "hub.out"
    with out.open("wb") as sink:
        hub = subprocess.Popen(
            [
                PULSE,
                "serve",
                "--home",
                str(home),
                "--socket",
                str(home.parent / "h.sock"),
                "--http",
                f"127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
    try:
        wait_for(lambda: "listening on" in out.read_text(), timeout=30)
        url = f"http://127.0.0.1:{port}/api/runs"
        # The token a local client reads from the home (the hub made it at start).
        bearer = {"Authorization": f"Bearer {read_token(home)}"}
        request = urllib.request.Request(url, headers=bearer)
        with urllib.request.urlopen(request, timeout=10) as response:
            rows = json.loads(response.read())["runs"]
    finally:
        hub.terminate()
        hub.wait(timeout=10)
    row = next(r for r in rows if r["training_id"] == training_id)
    return row["status"], row["liveness"]


@pytest.fixture
def launched(tmp_path: Path, env: dict[str, str]) -> Iterator[list[subprocess.Popen[str]]]:
    """`pulse run` processes a test starts; killed by pid if the test leaves them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def start(
    procs: list[subprocess.Popen[str]],
    home: Path,
    training_id: str,
    command: list[str],
    env: Mapping[str, str],
    *options: str,
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            PULSE,
            "run",
            "--home",
            str(home),
            "--training-id",
            training_id,
            "--flow-run-id",
            "fr",
            *options,
            "--",
            *command,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )
    procs.append(proc)
    return proc


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (FileNotFoundError, AttributeError, StopIteration):
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def child_pid(supervisor: subprocess.Popen[str]) -> int:
    """The pid of the (only) child of a `pulse run` process."""
    children: list[int] = []

    def found() -> bool:
        path = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
        children[:] = [int(p) for p in path.read_text().split()]
        return bool(children)

    wait_for(found)
    return children[0]


class TestNonReportingChild:
    """A command that never uses the library still gets a live, honest run."""

    def test_alive_and_running_while_it_lives(
        self, tmp_path: Path, env: dict[str, str], launched: list[subprocess.Popen[str]]
    ) -> None:
        """While a silent child runs every reader says running/alive, past the stale threshold."""
        home = tmp_path / "home"
        flag = tmp_path / "stop"
        until = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)"
        command = [sys.executable, "-c", until]  # never imports PULSE; exits 0 when told
        proc = start(launched, home, "plain-alive", command, env, "--claim-timeout", "5")
        wait_for(lambda: read_state(home, "plain-alive").status == "running", timeout=10)
        assert writer_alive(home, "plain-alive") is True  # the supervisor holds the lock
        time.sleep(3.0)  # longer than PULSE_STALE_AFTER: only heartbeats keep it alive
        said = readers(home, "plain-alive", env)
        assert said["ls"] == ("running", "alive")
        assert said["show"] == ("running", "alive")
        assert said["v1"] == "running"
        assert said["raw"] == "running"
        assert said["record"][1] == "alive"
        assert said["record"][0] not in ("lost", "error")
        assert web_row(home, "plain-alive", env) == ("running", "alive")
        watch = pulse(home, "watch", "plain-alive", "--timeout", "1", env=env)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        assert "gone" not in watch.stdout + watch.stderr
        flag.touch()
        assert proc.wait(timeout=30) == 0
        said = readers(home, "plain-alive", env)
        assert said["ls"] == ("done", "ended")
        assert said["v1"] == said["raw"] == "done"
        assert said["record"] == ("success", "ended")
        assert said["timeline"] == ["preparing", "running", "done"]

    def test_crash_keeps_and_classifies_the_stderr_tail(
        self, tmp_path: Path, env: dict[str, str], launched: list[subprocess.Popen[str]]
    ) -> None:
        """A child that dies of a missing file is DATASET_NOT_FOUND with its stderr tail kept."""
        home = tmp_path / "home"
        script = CRASH_SCRIPT.format(noise="x" * 100)
        proc = start(launched, home, "plain-crash", [sys.executable, "-c", script], env)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "epoch 1 loss 0.5" in stderr  # passed through to the terminal
        assert "FileNotFoundError" in stderr
        said = readers(home, "plain-crash", env)
        assert said["ls"] == ("error", "ended")
        assert said["v1"] == said["raw"] == "error"
        assert said["record"][0] == "error"
        error = said["error"]
        assert error["error_code"] == "DATASET_NOT_FOUND"
        assert "FileNotFoundError" in error["message"]
        assert error["details"]["exit_code"] == 1
        assert "epoch 1 loss 0.5" in error["details"]["stderr_tail"]
        assert error["details"]["stderr_tail"].rstrip().endswith("'/no/such/data/train.csv'")

    def test_stderr_on_a_terminal_stays_a_terminal(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """With `pulse run` on a terminal the child's stderr is one too, bytes unchanged."""
        master, slave = os.openpty()
        attributes = termios.tcgetattr(slave)
        attributes[1] &= ~termios.OPOST  # read back exactly what `pulse run` wrote
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        script = (
            "import os, sys\n"
            "sys.stderr.write(f'isatty={os.isatty(2)}\\n')\n"
            "sys.stderr.write('bar 50%\\rbar 100%\\n\\x1b[31mred\\x1b[0m\\n')\n"
            "sys.exit(2)\n"
        )
        home = tmp_path / "home"
        command = [PULSE, "run", "--home", str(home), "--training-id", "tty-1"]
        proc = subprocess.Popen(
            [*command, "--", sys.executable, "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=dict(env),
        )
        os.close(slave)
        received = b""
        try:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                received += chunk
        finally:
            os.close(master)
        assert proc.wait(timeout=30) == 2
        assert b"isatty=True\n" in received
        assert b"bar 50%\rbar 100%\n\x1b[31mred\x1b[0m\n" in received
        tail = read_state(home, "tty-1").errors[-1].details["stderr_tail"]
        assert tail.splitlines()[-2:] == ["bar 100%", "\x1b[31mred\x1b[0m"]

    def test_sigkill_of_the_child(
        self, tmp_path: Path, env: dict[str, str], launched: list[subprocess.Popen[str]]
    ) -> None:
        """SIGKILL of a silent child ends the run PROCESS_CRASHED in every reader."""
        home = tmp_path / "home"
        proc = start(launched, home, "plain-kill", ["sleep", "30"], env)
        wait_for(lambda: read_state(home, "plain-kill").status == "running")
        os.kill(child_pid(proc), signal.SIGKILL)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
        said = readers(home, "plain-kill", env)
        assert said["ls"] == ("error", "ended")
        assert said["v1"] == said["raw"] == "error"
        assert said["record"][0] == "error"
        assert said["error"]["error_code"] == "PROCESS_CRASHED"
        assert said["error"]["details"]["signal"] == "SIGKILL"

    def test_lock_let_go_is_held_again(
        self, tmp_path: Path, env: dict[str, str], launched: list[subprocess.Popen[str]]
    ) -> None:
        """A child that takes the lock and lets it go while it lives is not shown lost."""
        home = tmp_path / "home"
        flag = tmp_path / "stop"
        script = (
            "import os, time\n"
            "from pulse_transports.file import FileSink\n"
            "sink = FileSink(home=os.environ['PULSE_HOME'])\n"
            "sink.open(os.environ['PULSE_TRAINING_ID'])\n"
            "sink.close()\n"
            f"while not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
        )
        proc = start(launched, home, "plain-letgo", [sys.executable, "-c", script], env)
        wait_for(lambda: read_state(home, "plain-letgo").status == "running")
        time.sleep(2.5)  # the child has come and gone; the supervisor holds the run again
        assert writer_alive(home, "plain-letgo") is True
        said = readers(home, "plain-letgo", env)
        assert said["ls"] == ("running", "alive")
        flag.touch()
        assert proc.wait(timeout=30) == 0
        assert readers(home, "plain-letgo", env)["ls"] == ("done", "ended")


class TestReportingChild:
    """A child using TrainingRun takes the log over; the supervisor still writes the truth."""

    def test_sigkill_final_v1_snapshot(
        self, tmp_path: Path, env: dict[str, str], launched: list[subprocess.Popen[str]]
    ) -> None:
        """After a reporting child is SIGKILLed the v1 file says error, not running."""
        home = tmp_path / "home"
        proc = start(launched, home, "rep-kill", [sys.executable, CHILD, "wait_term"], env)
        wait_for(lambda: read_state(home, "rep-kill").epoch == 2)
        wait_for(lambda: orjson.loads((home / "training_status.json").read_bytes())["epoch"] == 2)
        os.kill(child_pid(proc), signal.SIGKILL)
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
        said = readers(home, "rep-kill", env)
        assert said["raw"] == said["v1"] == "error"
        assert said["ls"] == ("error", "ended")
        assert said["error"]["error_code"] == "PROCESS_CRASHED"
        assert said["timeline"].count("preparing") == 1

    def test_late_claim_is_never_refused(
        self, tmp_path: Path, env: dict[str, str], launched: list[subprocess.Popen[str]]
    ) -> None:
        """A child opening its run after the claim timeout gets the log and ends it done."""
        home = tmp_path / "home"
        proc = start(
            launched,
            home,
            "rep-late",
            [sys.executable, "-c", LATE_CLAIM],
            env,
            "--claim-timeout",
            "0.2",
        )
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "RunLocked" not in stderr
        said = readers(home, "rep-late", env)
        assert said["ls"] == ("done", "ended")
        assert said["raw"] == "done"
        assert said["timeline"] == ["preparing", "running", "done"]
        state = read_state(home, "rep-late")
        assert state.meta is not None
        assert state.meta.attempt == 1
        assert state.anomaly_count == 0
        assert state.step == 3


class TestClassifyText:
    """The stderr tail is classified by the rules used for in-process exceptions."""

    @pytest.mark.parametrize(
        ("tail", "expected"),
        [
            ("RuntimeError: CUDA out of memory. Tried to allocate 2 GiB", ("CUDA_OOM", True)),
            ("torch.OutOfMemoryError: CUDA out of memory.", ("CUDA_OOM", True)),
            (
                "FileNotFoundError: [Errno 2] No such file or directory: 'x'",
                ("DATASET_NOT_FOUND", False),
            ),
            ("cat: data.csv: No such file or directory", ("DATASET_NOT_FOUND", False)),
            ("Traceback (most recent call last):\nMemoryError", ("OUT_OF_MEMORY", True)),
            ("Traceback (most recent call last):\nValueError: bad", ("UNHANDLED_EXCEPTION", False)),
            ("segfault somewhere", ("PROCESS_CRASHED", False)),
            ("", ("PROCESS_CRASHED", False)),
        ],
    )
    def test_rules(self, tail: str, expected: tuple[str, bool]) -> None:
        """Each kind of tail maps to its code and retryability."""
        assert classify_text(tail) == expected

    def test_the_last_exception_decides(self) -> None:
        """An old warning about a missing file does not hide a later out-of-memory."""
        tail = "warning: cache.db: No such file or directory\nRuntimeError: CUDA out of memory"
        assert classify_text(tail) == ("CUDA_OOM", True)

    def test_tail_is_bounded(self) -> None:
        """The tail keeps at most 40 lines and 8 KiB, the newest ones."""
        many = b"".join(b"line %d\n" % i for i in range(1000))
        kept = bounded_tail(many).split("\n")
        assert len(kept) == TAIL_LINES
        assert kept[-1] == "line 999"
        wide = b"".join(b"%d:" % i + b"y" * 1000 + b"\n" for i in range(30))
        text = bounded_tail(wide)
        assert len(text.encode()) <= TAIL_BYTES
        assert text.split("\n")[-1].startswith("29:")
        assert all(line.endswith("y" * 1000) for line in text.split("\n"))  # no cut line

    def test_redrawn_lines_and_cut_start(self) -> None:
        """A progress bar redrawn with CR counts as its last drawing; a cut first line goes."""
        data = b"tail of a cut line\nepoch 1\r 10%\r 50%\r100%\nRuntimeError: boom\n"
        assert bounded_tail(data, cut=True) == "100%\nRuntimeError: boom"
        assert bounded_tail(b"a\r\nb\r\n") == "a\nb"


class TestChildEnvironment:
    """The child's environment lets it continue the run and log progress often."""

    def test_file_options(self, tmp_path: Path) -> None:
        """The child's log sink waits for the hand-over and writes progress every 0.25 s."""
        env = child_environment({}, "t1", tmp_path, FlowLink(attempt=1))
        tables = json.loads(env["PULSE_TRANSPORT_OPTIONS"])
        assert tables["file"]["interval"] == CHILD_LOG_INTERVAL
        assert tables["file"]["lock_wait"] >= 1.0
        assert env["PULSE_SUPERVISED"] == "1"
        assert env["PULSE_ATTEMPT"] == "1"

    def test_given_options_win(self, tmp_path: Path) -> None:
        """Options the user set for the file transport are kept."""
        base = {"PULSE_TRANSPORT_OPTIONS": json.dumps({"file": {"interval": 2.0}, "v1": {}})}
        env = child_environment(base, "t1", tmp_path, FlowLink(), file_options={"fsync": False})
        tables = json.loads(env["PULSE_TRANSPORT_OPTIONS"])
        assert tables["file"]["interval"] == 2.0
        assert tables["file"]["fsync"] is False
        assert "v1" in tables


def progress_lines(home: Path, training_id: str) -> list[Progress]:
    lines = log_path(home, training_id).read_bytes().splitlines()
    return [e for e in map(decode, lines) if isinstance(e, Progress)]


STEADY = """
import time
from pulse_core import TrainingRun
with TrainingRun(total_epochs=1) as run:
    for step in range(1, 101):
        run.progress(epoch=1, step=step, total_steps=100)
        run.metrics(loss=1.0 / step)
        time.sleep(0.02)
"""


class TestFlowUpdates:
    """A Flow step's updates follow the run closely and end with one final view."""

    def test_updates_cadence_final_once_one_preparing(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """Progress lands in the log every 0.25 s; the final view comes out once."""
        trainer = FlowTrainer(home=tmp_path / "home")
        step = trainer.start_process(
            [sys.executable, "-c", STEADY], flow_run_id="fr", flow_step_id="train"
        )
        views = list(step.updates(interval=0.1, timeout=60))
        outcome = step.wait(timeout=30)
        assert outcome is not None
        assert outcome.status == "done"
        assert [v["status"] for v in views].count("done") == 1
        assert views[-1]["status"] == "done"
        steps = {v["progress"]["step"] for v in views if v["status"] == "running"}
        # 2 s of training: a progress line every 0.25 s (1 s before the fix).
        assert len(progress_lines(trainer.home, step.training_id)) >= 5
        assert len(steps - {None}) >= 4
        timeline = [t["status"] for t in trainer.drill_down(step.training_id)["view"]["timeline"]]
        assert timeline == ["preparing", "running", "done"]
        assert step.record()["attempt"] == 1


class TestTransportOptionsEnv:
    """PULSE_TRANSPORT_OPTIONS carries option tables to a child's configuration."""

    def test_merged_over_file_tables(self, tmp_path: Path) -> None:
        """The variable's keys win; the file's other keys stay."""
        (tmp_path / "pulse.toml").write_text("[pulse.file]\nmax_bytes = 65536\ninterval = 2.0\n")
        env = {"PULSE_TRANSPORT_OPTIONS": json.dumps({"file": {"interval": 0.25}})}
        config = load_config(env=env, start=tmp_path)
        assert config.transport_options["file"] == {"max_bytes": 65536, "interval": 0.25}

    def test_bad_value_is_a_config_error(self) -> None:
        """A value that is not a JSON object of tables fails with the variable's name."""
        for bad in ("{not json", '["file"]', '{"file": 3}'):
            with pytest.raises(ConfigError, match="PULSE_TRANSPORT_OPTIONS"):
                load_config(env={"PULSE_TRANSPORT_OPTIONS": bad})


class TestReusedId:
    """`pulse run` with the id of a run that already ended."""

    def test_refused_with_one_line_and_nothing_written(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        """The second `pulse run` exits 2 with one line naming the id, and the log is unchanged."""
        home = tmp_path / "home"
        first = subprocess.run(
            [PULSE, "run", "--home", str(home), "--training-id", "reused", "--", "true"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=env,
        )
        assert first.returncode == 0, first.stderr
        log = home / "logs" / "training" / "reused.jsonl"
        before = log.read_bytes()
        second = subprocess.run(
            [PULSE, "run", "--home", str(home), "--training-id", "reused", "--", "true"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=env,
        )
        assert second.returncode == 2
        assert "reused" in second.stderr
        assert "Traceback" not in second.stderr
        assert log.read_bytes() == before
