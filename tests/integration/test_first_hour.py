"""Issue 20, the first hour: demo output, terminal width, pipes and CLI consistency.

Real ``pulse`` subprocesses: a pipe for the non-terminal case, a pseudo-terminal
80 columns wide for the terminal case, real SIGINT for Ctrl-C.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from pulse_core.codec import decode
from pulse_core.events import Metrics
from pulse_core.projections import V1_KEYS

PULSE = Path(sys.executable).parent / "pulse"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    out.update(extra)
    return out


def pulse(
    *args: str, cwd: Path, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PULSE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**extra),
        cwd=cwd,
        check=False,
    )


def on_pty(args: list[str], cwd: Path, columns: int = 80, timeout: float = 120) -> str:
    """Run ``pulse *args`` with stdout on a pseudo-terminal *columns* wide; its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [str(PULSE), *args],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env(COLUMNS=str(columns), TERM="xterm"),
        cwd=cwd,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=30)
    return b"".join(chunks).decode("utf-8", "replace")


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows, line by line: redraws (\\r, erase-line) split into lines."""
    text = raw.replace("\x1b[2K", "\n").replace("\r", "\n")
    return [line for line in ANSI.sub("", text).split("\n") if line.strip()]


def log_events(home: Path) -> list[object]:
    (path,) = (home / "logs" / "training").glob("*.jsonl")
    return [decode(line) for line in path.read_bytes().splitlines()]


class TestDemoOutput:
    """``pulse demo`` reports epoch means and validation figures, fit 80 columns or a pipe."""

    def test_piped_plain_lines_and_falling_epoch_mean_loss(self, tmp_path: Path) -> None:
        """Piped: one plain line per epoch, no escapes or ellipsis; the logged loss falls."""
        result = pulse("demo", "--fast", "--epochs", "5", "--home", "h", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "\x1b[" not in result.stdout
        assert "…" not in result.stdout
        epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
        assert [line.split()[1] for line in epochs] == [f"{n}/5" for n in range(1, 6)]
        assert all("val_loss" in line and "val_acc" in line for line in epochs)
        losses = [float(line.split()[3]) for line in epochs]
        assert losses == sorted(losses, reverse=True)
        assert losses[-1] < losses[0]
        # The log's loss is the epoch mean: one value per epoch, falling.
        logged = []
        for event in log_events(tmp_path / "h"):
            fresh = isinstance(event, Metrics) and event.loss is not None
            if fresh and (not logged or logged[-1] != event.loss):
                logged.append(event.loss)
        assert [round(v, 4) for v in logged] == losses
        metrics = [e for e in log_events(tmp_path / "h") if isinstance(e, Metrics)]
        assert any("val_accuracy" in e.extra and "val_loss" in e.extra for e in metrics)
        # The summary names each file on one line, then what to try next.
        lines = result.stdout.splitlines()
        assert any(
            line.strip().startswith("v2 log:") and line.strip().endswith(".jsonl") for line in lines
        )
        assert "try next:" in lines
        assert any("pulse watch" in line for line in lines)
        assert any("pulse serve" in line and "--http" in line for line in lines)

    def test_terminal_80_columns(self, tmp_path: Path) -> None:
        """At 80 columns no line is wider than 80; the bar keeps its percentage and loss."""
        raw = on_pty(["demo", "--fast", "--epochs", "2", "--home", "h"], cwd=tmp_path)
        lines = screen_lines(raw)
        assert lines, raw
        assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
        final = [line for line in lines if line.startswith("done ")]
        assert final, lines
        assert "100.0%" in final[-1]
        assert "loss 0." in final[-1]
        assert "…" not in final[-1]

    def test_ctrl_c_prints_the_summary(self, tmp_path: Path) -> None:
        """SIGINT: the run ends cancelled, the summary is printed, no 'Aborted!', exit 130."""
        proc = subprocess.Popen(
            [str(PULSE), "demo", "--home", "h"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 60
        while not list((tmp_path / "h" / "logs" / "training").glob("*.jsonl")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Aborted" not in out + err
        assert re.search(r"^run \S+ cancelled", out, re.MULTILINE), out
        assert "v2 log:" in out
        snapshot = json.loads((tmp_path / "h" / "training_status.json").read_text("utf-8"))
        assert snapshot["status"] == "cancelled"

    def test_bad_training_id_is_a_usage_error(self, tmp_path: Path) -> None:
        """``demo --training-id a/b`` exits 2 like the other commands."""
        result = pulse("demo", "--training-id", "a/b", "--home", "h", cwd=tmp_path)
        assert result.returncode == 2
        assert "'a/b'" in result.stderr


class TestReadingCommands:
    """ls, show, watch, v1 and replay after a demo: width, defaults and wording."""

    def test_show_after_demo(self, tmp_path: Path) -> None:
        """``show`` without an id shows the latest run; coalescing is not called missing."""
        assert pulse("demo", "--fast", "--epochs", "2", "--home", "h", cwd=tmp_path).returncode == 0
        shown = pulse("show", "--home", "h", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "pulse demo (numpy MLP)" in shown.stdout
        assert "missing" not in shown.stdout
        doc = json.loads(pulse("show", "--json", "--home", "h", cwd=tmp_path).stdout)
        assert doc["log"]["missing"] == 0
        assert doc["log"]["coalesced"] == doc["view"]["stats"]["missing"]
        if doc["log"]["coalesced"]:
            assert f"coalesced {doc['log']['coalesced']} (normal)" in shown.stdout
        # Piped: timeline lines are whole, never re-wrapped at 80 columns.
        narrow = pulse("show", "--home", "h", cwd=tmp_path, COLUMNS="60")
        assert any(
            line.rstrip().endswith("epochs of 156 steps") for line in narrow.stdout.splitlines()
        )

    def test_show_calls_skipped_seqs_coalesced(self, tmp_path: Path) -> None:
        """Seq numbers skipped in a log without bad lines are 'coalesced', not 'missing'."""
        from pulse_core.codec import encode
        from pulse_core.events import Progress, RunMeta, StatusChanged

        folder = tmp_path / "h" / "logs" / "training"
        folder.mkdir(parents=True)
        tid, at = "gappy", 1_795_000_000.0
        events = [
            RunMeta(training_id=tid, seq=1, timestamp=at, name="gaps"),
            StatusChanged(training_id=tid, seq=2, timestamp=at + 1, status="running"),
            Progress(training_id=tid, seq=5, timestamp=at + 2, epoch=1, total_epochs=1),
            StatusChanged(training_id=tid, seq=9, timestamp=at + 3, status="done"),
        ]
        (folder / f"{tid}.jsonl").write_bytes(b"".join(encode(e) + b"\n" for e in events))
        shown = pulse("show", tid, "--home", "h", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "coalesced 5 (normal)" in shown.stdout
        assert "missing" not in shown.stdout

    def test_show_names_real_gaps_missing(self, tmp_path: Path) -> None:
        """A log line destroyed in the middle of a log is reported as missing."""
        assert pulse("demo", "--fast", "--epochs", "2", "--home", "h", cwd=tmp_path).returncode == 0
        (path,) = (tmp_path / "h" / "logs" / "training").glob("*.jsonl")
        lines = path.read_bytes().splitlines(keepends=True)
        lines[3] = b"{garbage\n"
        path.write_bytes(b"".join(lines))
        doc = json.loads(pulse("show", "--json", "--home", "h", cwd=tmp_path).stdout)
        assert doc["log"]["bad_lines"] == 1
        assert doc["log"]["missing"] == 1
        shown = pulse("show", "--home", "h", cwd=tmp_path)
        assert "missing 1" in shown.stdout

    def test_ls_fits_80_columns(self, tmp_path: Path) -> None:
        """At 80 columns each ``ls`` row is one line, ids whole; piped rows are complete."""
        home = tmp_path / "h"
        assert (
            pulse("demo", "--fast", "--epochs", "1", "--home", str(home), cwd=tmp_path).returncode
            == 0
        )
        (path,) = (home / "logs" / "training").glob("*.jsonl")
        tid = path.stem
        lines = screen_lines(on_pty(["ls", "--home", str(home)], cwd=tmp_path))
        assert len(lines) == 2, lines
        assert max(len(line) for line in lines) <= 80
        assert lines[1].startswith(tid + " ")
        piped = pulse("ls", "--home", str(home), cwd=tmp_path, COLUMNS="80").stdout.splitlines()
        assert piped[0].split()[-1] == "FLOW"
        assert len(piped) == 2

    def test_group_home_and_messages(self, tmp_path: Path) -> None:
        """``--home`` before the command works; a file is 'a file'; no 'use --home' if given."""
        (tmp_path / "h").mkdir()
        listed = pulse("--home", "h", "ls", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "no runs under h" in listed.stdout
        (tmp_path / "f").write_text("x")
        as_env = pulse("ls", cwd=tmp_path, PULSE_HOME="f")
        assert as_env.returncode == 3
        assert "is a file" in as_env.stderr
        assert "does not exist" not in as_env.stderr
        given = pulse("ls", "--home", "nowhere/dir", cwd=tmp_path)
        assert given.returncode == 3
        assert "does not exist" in given.stderr
        assert "use --home" not in given.stderr

    def test_unicode_id_escaped_once(self, tmp_path: Path) -> None:
        """A rejected id with unicode is shown as typed, not double-escaped."""
        result = pulse("show", "héllo/x", "--home", ".", cwd=tmp_path)
        assert result.returncode == 2
        assert "'héllo/x'" in result.stderr
        assert "\\\\x" not in result.stderr

    def test_serve_http_names_accepted_forms(self, tmp_path: Path) -> None:
        """``serve --http abc`` names [HOST:]PORT, as its help does."""
        result = pulse("serve", "--http", "abc", "--home", ".", cwd=tmp_path)
        assert result.returncode == 2
        assert "[HOST:]PORT" in result.stderr

    def test_v1_json_order_and_replay_json(self, tmp_path: Path) -> None:
        """``v1 --json`` keeps the v1 field order; ``replay`` prints the snapshot as JSON."""
        assert pulse("demo", "--fast", "--epochs", "1", "--home", "h", cwd=tmp_path).returncode == 0
        snapshot = json.loads(pulse("v1", "--json", "--home", "h", cwd=tmp_path).stdout)
        assert tuple(snapshot) == V1_KEYS
        (path,) = (tmp_path / "h" / "logs" / "training").glob("*.jsonl")
        replayed = pulse("replay", str(path), cwd=tmp_path)
        (line,) = [x for x in replayed.stdout.splitlines() if x.strip().startswith("v1: ")]
        assert json.loads(line.strip()[4:])["status"] == "done"

    def test_validate_on_a_folder(self, tmp_path: Path) -> None:
        """``validate`` on a folder says it is a folder and what to give instead."""
        result = pulse("validate", str(tmp_path), cwd=tmp_path)
        assert result.returncode == 4
        assert "is a folder" in result.stderr


class TestWatchFreshDirectory:
    """The quickstart's 'pulse watch in a second terminal, before the run' in a fresh directory."""

    def test_timeout_without_run_exits_0(self, tmp_path: Path) -> None:
        """No home and no run: it waits, then --timeout exits 0 as its help says."""
        result = pulse("watch", "--timeout", "1", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "waiting for a run" in result.stderr
        assert not (tmp_path / ".pulse").exists()

    def test_waits_for_the_first_run(self, tmp_path: Path) -> None:
        """Started before the home exists, watch follows the first run to its end (exit 0)."""
        watcher = subprocess.Popen(
            [str(PULSE), "watch", "--timeout", "90"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=tmp_path,
        )
        try:
            time.sleep(1.0)
            assert watcher.poll() is None
            demo = pulse("demo", "--epochs", "3", cwd=tmp_path)
            assert demo.returncode == 0, demo.stderr
            out, err = watcher.communicate(timeout=60)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        assert watcher.returncode == 0, err
        assert "waiting for a run" in err
        assert "done" in out


class TestFlowName:
    """``FlowTrainer.start_process(name=...)`` keeps the flow's name for the run."""

    def test_flow_name_wins_over_the_scripts(self, tmp_path: Path) -> None:
        """The child's TrainingRun(name=...) no longer replaces it; it is kept as a label."""
        from pulse_transports.flows import FlowTrainer
        from pulse_transports.history import load_run

        script = (
            "from pulse_core import TrainingRun\n"
            "with TrainingRun(name='my model', total_epochs=1) as run:\n"
            "    run.status('running', 'go')\n"
            "    run.metrics(loss=0.5)\n"
        )
        home = tmp_path / "home"
        home.mkdir()
        trainer = FlowTrainer(home=home)
        step = trainer.start_process(
            [sys.executable, "-c", script],
            name="nightly model",
            flow_id="f",
            flow_run_id="fr",
            flow_step_id="train",
            env={k: v for k, v in os.environ.items() if not k.startswith("PULSE_")},
        )
        outcome = step.wait(60)
        assert outcome is not None
        assert outcome.outcome == "success", outcome
        state = load_run(home, step.training_id).state
        assert state.meta is not None
        assert state.meta.name == "nightly model"
        assert dict(state.meta.labels).get("script_name") == "my model"
        shown = json.loads(pulse("show", "--json", "--home", str(home), cwd=tmp_path).stdout)
        assert shown["view"]["run"]["name"] == "nightly model"
