"""Tests of the run-reading commands: ls, show, v1, replay, watch, validate."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from pulse_core.codec import encode
from pulse_core.events import (
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_transports.cli import main
from pulse_transports.file import FileSink, log_path

SPECS = Path(__file__).resolve().parents[2] / "specs"
NOW = time.time()


def run_events(
    tid: str, start: float, *, end: str | None = "done", flow_run_id: str | None = None
) -> list[Event]:
    """A small run: meta, running, three epochs of progress and loss, then *end*."""
    out: list[Event] = [
        RunMeta(
            training_id=tid,
            seq=1,
            timestamp=start,
            name="cli test",
            total_epochs=3,
            flow_id="flow-a" if flow_run_id else None,
            flow_run_id=flow_run_id,
        ),
        StatusChanged(training_id=tid, seq=2, timestamp=start + 1, status="running", message="go"),
    ]
    seq = 2
    for epoch in (1, 2, 3):
        for step in (5, 10):
            seq += 1
            out.append(
                Progress(
                    training_id=tid,
                    seq=seq,
                    timestamp=start + epoch + step / 10,
                    epoch=epoch,
                    total_epochs=3,
                    step=step,
                    total_steps=10,
                )
            )
            seq += 1
            out.append(
                Metrics(
                    training_id=tid,
                    seq=seq,
                    timestamp=start + epoch + step / 10,
                    loss=2.0 / (epoch * step),
                )
            )
    if end == "error":
        seq += 1
        out.append(
            ErrorReported(
                training_id=tid,
                seq=seq,
                timestamp=start + 8,
                error_code="DATASET_NOT_FOUND",
                message="shard 3 missing",
                details={"path": "/data/shard-3"},
            )
        )
    if end is not None:
        seq += 1
        out.append(StatusChanged(training_id=tid, seq=seq, timestamp=start + 9, status=end))
    return out


def write(home: Path, evs: list[Event], extra: bytes = b"") -> Path:
    path = log_path(home, evs[0].training_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(encode(e) for e in evs) + extra)
    return path


def invoke(*args: str, home: Path | None = None) -> Result:
    env = {"PULSE_HOME": str(home)} if home is not None else {}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def home(tmp_home: Path) -> Path:
    """A home with a finished run, an errored run with a flow link and a lost run."""
    write(tmp_home, run_events("done-run", NOW - 300))
    write(tmp_home, run_events("error-run", NOW - 200, end="error", flow_run_id="fr-1"))
    write(tmp_home, run_events("lost-run", NOW - 100, end=None), extra=b"garbage\n")
    return tmp_home


class TestLs:
    """pulse ls lists runs newest first with filters and stable JSON."""

    def test_table(self, home: Path) -> None:
        result = invoke("ls", home=home)
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["ID", "STATUS", "LIVENESS"]
        assert [line.split()[0] for line in lines[1:]] == ["lost-run", "error-run", "done-run"]
        assert "flow-a/fr-1" in result.output

    def test_json(self, home: Path) -> None:
        result = invoke("ls", "--json", home=home)
        document = orjson.loads(result.stdout)
        assert document["home"] == str(home)
        rows = {r["training_id"]: r for r in document["runs"]}
        assert rows["done-run"]["progress"] == 1.0
        assert rows["lost-run"]["liveness"] == "lost"
        assert rows["lost-run"]["bad_lines"] == 1
        assert rows["lost-run"]["loss"] == pytest.approx(2.0 / 30)
        assert rows["error-run"]["error"]["error_code"] == "DATASET_NOT_FOUND"
        assert set(rows["done-run"]) >= {
            "training_id",
            "status",
            "liveness",
            "progress",
            "loss",
            "started_at",
            "duration",
            "flow",
            "log",
        }

    @pytest.mark.parametrize(
        ("args", "ids"),
        [
            (["--status", "error"], ["error-run"]),
            (["--status", "lost"], ["lost-run"]),
            (["--status", "ended"], ["error-run", "done-run"]),
            (["--flow-run-id", "fr-1"], ["error-run"]),
            (["--limit", "1"], ["lost-run"]),
        ],
    )
    def test_filters(self, home: Path, args: list[str], ids: list[str]) -> None:
        result = invoke("ls", "--json", *args, home=home)
        assert [r["training_id"] for r in orjson.loads(result.stdout)["runs"]] == ids

    def test_empty_and_missing_home(self, tmp_home: Path) -> None:
        assert "no runs" in invoke("ls", home=tmp_home).output
        missing = invoke("ls", home=tmp_home / "missing")
        assert missing.exit_code == 3
        assert "does not exist" in missing.output

    def test_home_option_wins(self, home: Path, tmp_path: Path) -> None:
        result = invoke("ls", "--json", "--home", str(home), home=tmp_path / "other")
        assert len(orjson.loads(result.stdout)["runs"]) == 3


class TestShow:
    """pulse show details one run; unknown and malformed ids fail clearly."""

    def test_human(self, home: Path) -> None:
        result = invoke("show", "error-run", home=home)
        assert result.exit_code == 0
        out = result.output
        for text in (
            "timeline",
            "running",
            "DATASET_NOT_FOUND",
            "shard 3 missing",
            "not retryable",
            "/data/shard-3",
            "flow-a/fr-1",
            "loss trend",
            str(log_path(home, "error-run")),
        ):
            assert text in out
        assert any(ch in out for ch in "▁▂▃▄▅▆▇█")

    def test_lost_run_says_so(self, home: Path) -> None:
        out = invoke("show", "lost-run", home=home).output
        assert "lost" in out
        assert "training process lost" in out

    def test_json(self, home: Path) -> None:
        document = orjson.loads(invoke("show", "done-run", "--json", home=home).stdout)
        assert set(document) == {
            "training_id",
            "liveness",
            "writer_alive",
            "log",
            "view",
            "v1",
            "history",
            "metric_history",
        }
        assert document["view"]["status"] == "done"
        assert document["history"]["outcome"] == "success"
        assert document["metric_history"]["loss"]["count"] == 6

    def test_errors(self, home: Path) -> None:
        unknown = invoke("show", "nope", home=home)
        assert unknown.exit_code == 3
        assert "no run 'nope'" in unknown.output
        malformed = invoke("show", "../etc/passwd", home=home)
        assert malformed.exit_code == 2
        assert "training_id" in malformed.output


class TestV1:
    """pulse v1 rebuilds the v1 snapshot, by default of the run the v1 slot shows."""

    def test_default_is_latest_stopped_run_without_live_ones(self, home: Path) -> None:
        snapshot = orjson.loads(invoke("v1", "--json", home=home).stdout)
        # The v1 field order, as in training_status.json (was sorted before issue 20).
        assert list(snapshot) == ["status", "epoch", "total_epochs", "loss", "message", "timestamp"]
        assert snapshot["status"] == "error"
        assert snapshot["message"].startswith("training process lost")

    def test_default_prefers_a_live_run(self, home: Path) -> None:
        sink = FileSink(home=home, fsync=False)
        sink.open("live-run")
        try:
            for event in run_events("live-run", NOW - 1000, end=None):
                sink.write(event)
            sink.write(Heartbeat(training_id="live-run", seq=99, timestamp=time.time()))
            result = invoke("v1", home=home)
            assert "run live-run (alive)" in result.output
            assert orjson.loads(invoke("v1", "--json", home=home).stdout)["status"] == "running"
        finally:
            sink.close()

    def test_by_id_and_errors(self, home: Path, tmp_home: Path) -> None:
        snapshot = orjson.loads(invoke("v1", "done-run", "--json", home=home).stdout)
        assert (snapshot["status"], snapshot["epoch"], snapshot["total_epochs"]) == ("done", 3, 3)
        assert invoke("v1", "nope", home=home).exit_code == 3
        empty = tmp_home.parent / "empty"
        empty.mkdir()
        assert invoke("v1", home=empty).exit_code == 3


class TestReplay:
    """pulse replay folds any file; unreadable ones exit 4 with a reason."""

    def test_readable_file_with_bad_lines(self, home: Path) -> None:
        path = log_path(home, "lost-run")
        result = invoke("replay", str(path), "--json")
        assert result.exit_code == 0
        document = orjson.loads(result.stdout)
        assert (document["bad_lines"], document["events"]) == (1, 14)
        assert document["bad"][0]["line"] == 15
        (run,) = document["runs"]
        assert run["liveness"] == "lost"  # the file is in a home: its lock was checked
        human = invoke("replay", str(path))
        assert "line 15" in human.output

    def test_by_id(self, home: Path) -> None:
        result = invoke("replay", "done-run", home=home)
        assert result.exit_code == 0
        assert "done-run: done (ended)" in result.output

    def test_several_runs_in_one_file(self, tmp_path: Path) -> None:
        both = run_events("a-run", NOW) + run_events("b-run", NOW, end="cancelled")
        path = tmp_path / "both.jsonl"
        path.write_bytes(b"".join(encode(e) for e in both))
        document = orjson.loads(invoke("replay", str(path), "--json").stdout)
        assert [(r["training_id"], r["view"]["status"]) for r in document["runs"]] == [
            ("a-run", "done"),
            ("b-run", "cancelled"),
        ]
        assert document["runs"][0]["view"]["anomaly_count"] == 0

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"", "no decodable PULSE event"),
            (b"garbage\n[1]\n", "no decodable PULSE event"),
            (None, "is a folder, not a regular file"),
        ],
    )
    def test_unreadable(self, tmp_path: Path, content: bytes | None, reason: str) -> None:
        path = tmp_path / "log.jsonl"
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        result = invoke("replay", str(path))
        assert result.exit_code == 4
        # One line of reason; the reader's structured warnings about skipped
        # lines (stderr diagnostics) may come before it.
        lines = [
            line
            for line in result.output.strip().splitlines()
            if not line.startswith(("pulse warning:", "pulse info:"))
        ]
        assert len(lines) == 1
        assert reason in lines[0]
        assert "Traceback" not in result.output

    def test_missing_file(self, tmp_path: Path) -> None:
        result = invoke("replay", str(tmp_path / "nope.jsonl"))
        assert result.exit_code == 4
        assert "no such file" in result.output

    def test_every_spec_vector(self) -> None:
        for path in sorted((SPECS / "vectors").glob("*.jsonl")):
            result = invoke("replay", str(path), "--json")
            expected = 4 if path.stem == "nothing_decodable" else 0
            assert result.exit_code == expected, (path.name, result.output)


class TestValidate:
    """pulse validate checks schema and protocol rules line by line."""

    def test_valid_log(self, home: Path) -> None:
        result = invoke("validate", str(log_path(home, "done-run")))
        assert result.exit_code == 0
        assert "valid: 15 lines, 15 events, 0 errors" in result.output

    def test_protocol_errors_with_line_numbers(self, tmp_path: Path) -> None:
        evs = run_events("p-run", NOW)
        bad = [
            *evs[:4],
            evs[3],  # seq repeated
            StatusChanged(training_id="p-run", seq=50, timestamp=NOW, status="preparing"),
            Heartbeat(training_id="other", seq=51, timestamp=NOW),
        ]
        path = tmp_path / "p.jsonl"
        path.write_bytes(b"".join(encode(e) for e in bad) + b"\n" + b"junk\n")
        result = invoke("validate", str(path), "--json")
        assert result.exit_code == 1
        document = orjson.loads(result.stdout)
        kinds = [(e["line"], e["kind"]) for e in document["errors"]]
        assert kinds == [(5, "seq"), (6, "transition"), (7, "training_id"), (9, "not_json")]
        assert document["warnings"] == [{"line": 8, "kind": "blank", "message": "empty line"}]
        assert not document["valid"]

    def test_schema_error_names_the_field(self, tmp_path: Path) -> None:
        path = tmp_path / "s.jsonl"
        line = b'{"type":"progress","v":2,"training_id":"s","seq":1,"timestamp":1,"epoch":"2"}\n'
        path.write_bytes(line)
        result = invoke("validate", str(path))
        assert result.exit_code == 1
        assert f"{path}:1: error: schema: epoch:" in result.output

    def test_after_terminal(self, tmp_path: Path) -> None:
        evs = run_events("t-run", NOW)
        extra = Progress(training_id="t-run", seq=len(evs) + 1, timestamp=NOW + 20, epoch=4)
        path = tmp_path / "t.jsonl"
        path.write_bytes(b"".join(encode(e) for e in [*evs, extra]))
        document = orjson.loads(invoke("validate", str(path), "--json").stdout)
        assert [e["kind"] for e in document["errors"]] == ["after_terminal"]

    def test_spec_vectors(self) -> None:
        assert invoke("validate", str(SPECS / "vectors" / "happy_run.jsonl")).exit_code == 0
        broken = invoke("validate", str(SPECS / "vectors" / "broken_lines.jsonl"))
        assert broken.exit_code == 1
        assert "broken_lines.jsonl:3: error: not_json" in broken.output

    def test_unreadable(self, tmp_path: Path) -> None:
        assert invoke("validate", str(tmp_path / "nope")).exit_code == 4
        assert invoke("validate", str(tmp_path)).exit_code == 4


class TestWatch:
    """pulse watch follows a run to its end, and says when it is lost."""

    def test_once(self, home: Path) -> None:
        result = invoke("watch", "done-run", "--once", home=home)
        assert result.exit_code == 0
        assert "ended: done" in result.output

    def test_lost_run_exits_1(self, home: Path) -> None:
        result = invoke("watch", "lost-run", home=home)
        assert result.exit_code == 1
        assert "is lost" in result.output

    def test_follows_a_live_run_to_its_end(self, tmp_home: Path) -> None:
        evs = run_events("live-run", time.time())
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("live-run")
        for event in evs[:3]:
            sink.write(event)

        def writer() -> None:
            time.sleep(0.5)
            for event in evs[3:]:
                sink.write(event)
                time.sleep(0.03)
            sink.close()

        thread = threading.Thread(target=writer)
        thread.start()
        result = invoke("watch", "--timeout", "60", home=tmp_home)
        thread.join()
        assert result.exit_code == 0, result.output
        assert "watching live-run" in result.output
        assert "status done" in result.output
        assert "ended: done" in result.output

    def test_json_lines_and_error_exit(self, tmp_home: Path) -> None:
        evs = run_events("err-run", time.time(), end="error")
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("err-run")
        for event in evs[:3]:
            sink.write(event)

        def writer() -> None:
            time.sleep(0.3)
            for event in evs[3:]:
                sink.write(event)
                time.sleep(0.02)
            sink.close()

        thread = threading.Thread(target=writer)
        thread.start()
        result = invoke("watch", "err-run", "--json", "--timeout", "60", home=tmp_home)
        thread.join()
        assert result.exit_code == 1
        lines = [orjson.loads(line) for line in result.stdout.splitlines()]
        reasons = [line["reason"] for line in lines]
        assert reasons[0] == "start"
        assert reasons[-1] == "end"
        assert "error" in reasons
        assert lines[-1]["run"]["status"] == "error"

    def test_timeout_and_errors(self, home: Path) -> None:
        sink = FileSink(home=home, fsync=False)
        sink.open("quiet-run")
        try:
            for event in run_events("quiet-run", time.time(), end=None):
                sink.write(event)
            result = invoke("watch", "quiet-run", "--timeout", "0.5", home=home)
            assert result.exit_code == 0
        finally:
            sink.close()
        assert invoke("watch", "nope", home=home).exit_code == 3
        assert invoke("watch", "--once", home=home).exit_code == 3  # no live run
        assert invoke("watch", "bad/id", home=home).exit_code == 2


class TestHelpAndEntryPoint:
    """Every command has examples in --help; the installed `pulse` script runs."""

    @pytest.mark.parametrize("command", ["ls", "show", "v1", "replay", "watch", "validate"])
    def test_help_has_examples(self, command: str) -> None:
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.output
        assert "--home" in result.output

    def test_real_process(self, home: Path) -> None:
        script = Path(sys.executable).with_name("pulse")
        command = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from pulse_transports.cli import main; main()"]
        )
        done = subprocess.run(
            [*command, "ls", "--json"],
            capture_output=True,
            env={**os.environ, "PULSE_HOME": str(home)},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert len(orjson.loads(done.stdout)["runs"]) == 3


class TestWatchInterrupt:
    """Ctrl-C (SIGINT) stops a real `pulse watch` process cleanly with exit status 0."""

    def test_sigint_exits_0(self, tmp_home: Path) -> None:
        import signal

        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("long-run")
        try:
            for event in run_events("long-run", time.time(), end=None):
                sink.write(event)
            script = Path(sys.executable).with_name("pulse")
            command = (
                [str(script)]
                if script.exists()
                else [sys.executable, "-c", "from pulse_transports.cli import main; main()"]
            )
            proc = subprocess.Popen(
                [*command, "watch", "long-run", "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PULSE_HOME": str(tmp_home)},
            )
            assert proc.stdout is not None
            first = orjson.loads(proc.stdout.readline())  # it is watching
            assert first["reason"] == "start"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert b"Traceback" not in err
        finally:
            sink.close()


GLOO = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] "
    "Connection closed by peer [127.0.0.1]:29500"
)


PULSE = (sys.executable, "-m", "pulse_transports.cli")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess with ``--home``."""
    return subprocess.run(
        [*PULSE, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def hostile_run(home: Path, tid: str, *, end: str | None) -> Path:
    """A run with millisecond timestamps and gloo-style ``[...]`` text everywhere."""
    start = 1.7e12  # milliseconds written as seconds: year 55840
    evs: list[Event] = [
        RunMeta(training_id=tid, seq=1, timestamp=start, name="[bold]gloo[/]", total_epochs=2),
        StatusChanged(training_id=tid, seq=2, timestamp=start + 1, status="running", message=GLOO),
        Progress(training_id=tid, seq=3, timestamp=start + 2, epoch=1, total_epochs=2),
        Metrics(training_id=tid, seq=4, timestamp=start + 3, loss=0.5, extra={"acc[/x]": 0.9}),
        ErrorReported(
            training_id=tid,
            seq=5,
            timestamp=start + 4,
            error_code="DIST_PEER_CLOSED",
            message=GLOO,
            details={"[/k]": "[/v] " + GLOO},
        ),
    ]
    if end is not None:
        evs.append(StatusChanged(training_id=tid, seq=6, timestamp=start + 5, status=end))
    return write(home, evs)


class TestUntrustedText:
    """Text from the log is never rich markup, and any timestamp renders (real processes)."""

    @pytest.mark.parametrize("end", ["error", None])
    def test_show_renders_gloo_errors_and_millisecond_timestamps(
        self, tmp_home: Path, end: str | None
    ) -> None:
        """pulse show prints the literal text and the raw timestamp, no traceback."""
        hostile_run(tmp_home, "gloo-run", end=end)
        assert cli(tmp_home, "validate", str(log_path(tmp_home, "gloo-run"))).returncode == 0
        done = cli(tmp_home, "show", "gloo-run")
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        flat = " ".join(done.stdout.split())
        assert "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534]" in flat
        assert "[127.0.0.1]:29500" in flat
        assert "[/k]: [/v]" in flat
        assert "[bold]gloo[/]" in flat
        assert "@1700000000001 (not a time)" in flat

    def test_watch_once_and_ls(self, tmp_home: Path) -> None:
        """pulse watch --once and pulse ls print such a run without crashing."""
        hostile_run(tmp_home, "gloo-run", end="error")
        watched = cli(tmp_home, "watch", "gloo-run", "--once")
        assert watched.returncode == 0, watched.stderr
        assert "Traceback" not in watched.stderr
        assert "acc[/x]" in watched.stdout
        listed = cli(tmp_home, "ls")
        assert listed.returncode == 0, listed.stderr
        assert "@1700000000001 (not a time)" in listed.stdout

    def test_watch_prints_gloo_lines_as_they_come(self, tmp_home: Path) -> None:
        """A followed run's status and error lines with ``[...]`` print literally."""
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("live-gloo")
        now = time.time()
        sink.write(RunMeta(training_id="live-gloo", seq=1, timestamp=now))
        try:
            proc = subprocess.Popen(
                [*PULSE, "watch", "live-gloo", "--timeout", "60", "--home", str(tmp_home)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            assert "watching" in proc.stdout.readline()
            for event in (
                StatusChanged(training_id="live-gloo", seq=2, timestamp=now, status="running"),
                ErrorReported(
                    training_id="live-gloo",
                    seq=3,
                    timestamp=now,
                    error_code="DIST",
                    message=GLOO,
                ),
                StatusChanged(
                    training_id="live-gloo", seq=4, timestamp=now, status="error", message=GLOO
                ),
            ):
                sink.write(event)
            out, err = proc.communicate(timeout=60)
        finally:
            sink.close()
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        assert "[127.0.0.1]:29500" in " ".join(out.split())


class TestWatchJsonStatusLines:
    """pulse watch --json prints one line per status change, in order, as of that change."""

    def test_statuses_read_together_each_get_their_line(self, tmp_home: Path) -> None:
        """cooling_down then done in one read: two status lines, cooling_down first."""
        tid = "batched-run"
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open(tid)
        now = time.time()
        for event in run_events(tid, now, end=None):
            sink.write(event)
        try:
            proc = subprocess.Popen(
                [*PULSE, "watch", tid, "--json", "--timeout", "60", "--home", str(tmp_home)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdout is not None
            assert orjson.loads(proc.stdout.readline())["reason"] == "start"
            # One write(2): the watcher reads the three lines in one batch.
            batch = b"".join(
                encode(e)
                for e in (
                    StatusChanged(tid, 15, now + 10, "cooling_down", "saving"),
                    StatusChanged(tid, 16, now + 11, "cooling_down", "refused: no change"),
                    StatusChanged(tid, 17, now + 12, "done", "finished"),
                )
            )
            with log_path(tmp_home, tid).open("ab") as handle:
                handle.write(batch)
            out, err = proc.communicate(timeout=60)
        finally:
            sink.close()
        assert proc.returncode == 0, err
        lines = [orjson.loads(line) for line in out.splitlines()]
        status_lines = [
            (x["run"]["status"], x["run"]["message"]) for x in lines if x["reason"] == "status"
        ]
        assert status_lines == [("cooling_down", "saving"), ("done", "finished")]
        assert lines[-1]["reason"] == "end"
