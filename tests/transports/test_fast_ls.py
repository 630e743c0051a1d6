"""The fast ``pulse ls`` (issue 19 item 3): the click command's bytes, without click.

Every case runs the real ``pulse`` entry (``python -m pulse_transports.cli``)
and the click group (``main(prog_name="pulse")``) in new processes over the
same home and compares stdout, stderr and the exit code; a probe checks which
cases the fast path answered (click never imported) and which it handed on.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path, PurePosixPath

import click
import pytest
from fastcli import CLICK, FAST
from fastcli import run as _run
from fastcli import same as _same

from pulse_core.codec import encode
from pulse_core.events import ErrorReported, Event, Metrics, Progress, RunMeta, StatusChanged
from pulse_core.statecodec import STATE_FORMAT
from pulse_transports.cli import _fast
from pulse_transports.cli._table import style
from pulse_transports.cli.ls import V1_FILE_NAME
from pulse_transports.configfile import expand_user, path_str
from pulse_transports.file import FileSink, log_path
from pulse_transports.index import INDEX_FILE

PROBE = """
import sys
from pulse_transports.cli._fast import fast_ls
code = fast_ls(sys.argv[1:])
print(code, "click" in sys.modules, "pulse_core" in sys.modules, file=sys.stderr)
"""


def _events(tid: str, start: float, end: str | None, flow_run_id: str | None = None) -> bytes:
    out: list[Event] = [
        RunMeta(
            tid, 1, start, name="fast ls", total_epochs=3, flow_id="f", flow_run_id=flow_run_id
        ),
        StatusChanged(tid, 2, start + 1, "running"),
    ]
    for i in range(6):
        out.append(Progress(tid, 3 + 2 * i, start + 2 + i, epoch=1 + i // 2, step=i))
        out.append(Metrics(tid, 4 + 2 * i, start + 2 + i, loss=1.5 / (i + 1)))
    if end == "error":
        out.append(ErrorReported(tid, 15, start + 9, error_code="OOM", message="out of memory"))
    if end is not None:
        out.append(StatusChanged(tid, 16, start + 10, end))
    return b"".join(encode(e) for e in out)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Ended runs (done, error with a flow, cancelled, one from a past day) and a lost one."""
    home = tmp_path / "home"
    now = time.time()
    runs = {
        "done-1": (now - 500, "done", None),
        "error-1": (now - 400, "error", "fr-1"),
        "cancel-1": (now - 300, "cancelled", "fr-1"),
        "old-1": (now - 5 * 86400, "done", "fr-2"),
        "lost-1": (now - 200, None, None),
    }
    for tid, (start, end, flow) in runs.items():
        path = log_path(home, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_events(tid, start, end, flow))
    done = _run(CLICK, ["ls", "--home", str(home)], tmp_path)  # builds the index
    assert done.returncode == 0, done.stderr
    return home


ARGS = [
    [],
    ["--json"],
    ["--status", "done"],
    ["--status=error", "--json"],
    ["--status", "ended"],
    ["--status", "lost", "--json"],
    ["--status", "running"],
    ["--flow-run-id", "fr-1"],
    ["--flow-run-id=fr-2", "--json"],
    ["--flow-run-id", "nope"],
    ["--limit", "2"],
    ["--limit=1", "--json", "--status", "done"],
    ["--limit", "2", "--limit", "3"],
    ["--source", "file"],
    ["--source=file", "--json"],
]


@pytest.mark.parametrize("args", ARGS, ids=lambda a: " ".join(a) or "plain")
def test_same_bytes_as_click_and_no_click(home: Path, args: list[str]) -> None:
    argv = ["ls", "--home", str(home), *args]
    fast = _same(argv, home.parent)
    assert fast.returncode == 0
    assert fast.stdout
    probe = _run([sys.executable, "-c", PROBE], argv, home.parent)
    # The lost run is judged through history (pulse_core); click is never imported.
    assert probe.stderr.decode().split()[-3:] == ["0", "False", "True"], probe.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--home", "{home}", "ls"],
        ["--home", "/nowhere", "ls", "--home", "{home}", "--json"],
    ],
)
def test_group_home_same_bytes(home: Path, argv: list[str]) -> None:
    argv = [a.format(home=home) for a in argv]
    fast = _same(argv, home.parent)
    assert b"done-1" in fast.stdout


def test_pulse_home_and_default_home(home: Path) -> None:
    for cwd, env in ((home.parent, {"PULSE_HOME": str(home)}), (home, {})):
        if not env:
            (home / ".pulse").symlink_to(home)
        fast = _run(FAST, ["ls", "--json"], cwd, **env)
        slow = _run(CLICK, ["ls", "--json"], cwd, **env)
        assert (fast.returncode, fast.stdout) == (slow.returncode, slow.stdout)
        assert b"done-1" in fast.stdout


HANDED_ON = [
    ["ls", "--help"],
    ["-v", "ls"],
    ["ls", "--status", "bogus"],
    ["ls", "--limit", "0"],
    ["ls", "--limit", "x"],
    ["ls", "--wat"],
    ["ls", "extra"],
    ["ls", "--source", "nats"],
    ["ls", "--url", "nats://127.0.0.1:1"],
    ["ls", "--flow-run-id"],
    ["--version"],
    ["show"],
    [],
]


@pytest.mark.parametrize("args", HANDED_ON, ids=lambda a: " ".join(a) or "none")
def test_anything_else_is_handed_to_click(home: Path, args: list[str]) -> None:
    assert _fast.fast_ls(args) is None
    _same([*args, "--home", str(home)] if args else args, home.parent)


def test_missing_home_and_file_home_exit_like_click(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for home in (tmp_path / "missing", tmp_path / "file"):
        argv = ["ls", "--home", str(home)]
        fast = _same(argv, tmp_path)
        assert fast.returncode in (2, 3)


def test_empty_home(tmp_path: Path) -> None:
    argv = ["ls", "--home", str(tmp_path)]
    fast = _run(FAST, argv, tmp_path)
    assert (
        fast.stdout == _run(CLICK, argv, tmp_path).stdout == f"no runs under {tmp_path}\n".encode()
    )


def test_live_run_is_alive_and_ended_ones_come_from_rows(home: Path) -> None:
    sink = FileSink(home=home, fsync=False, interval=0.0)
    sink.open("live-1")
    try:
        sink.write(RunMeta("live-1", 1, time.time(), name="live"))
        sink.write(StatusChanged("live-1", 2, time.time(), "running"))
        probe = _run([sys.executable, "-c", PROBE], ["ls", "--home", str(home), "--json"], home)
        assert probe.stderr.decode().split()[-3:] == ["0", "False", "True"], probe.stderr
        import orjson

        rows = {r["training_id"]: r for r in orjson.loads(probe.stdout)["runs"]}
        assert rows["live-1"]["liveness"] == "alive"
        assert rows["lost-1"]["liveness"] == "lost"
        assert rows["done-1"]["liveness"] == "ended"
        assert next(iter(rows)) == "live-1"  # newest first
        sink.write(StatusChanged("live-1", 3, time.time(), "done"))
    finally:
        sink.close()
    probe = _run([sys.executable, "-c", PROBE], ["ls", "--home", str(home), "--json"], home)
    import orjson

    rows = {r["training_id"]: r for r in orjson.loads(probe.stdout)["runs"]}
    assert (rows["live-1"]["status"], rows["live-1"]["liveness"]) == ("done", "ended")


def test_changed_deleted_or_old_index_is_handed_on_then_fast_again(home: Path) -> None:
    argv = ["ls", "--home", str(home)]
    os.unlink(log_path(home, "done-1"))  # a row for a deleted log: ls forgets it
    assert _fast.fast_ls(argv) is None
    assert b"done-1" not in _run(FAST, argv, home).stdout
    db = sqlite3.connect(home / INDEX_FILE)
    with db:
        db.execute("UPDATE info SET value = 'old' WHERE key = 'format'")
    db.close()
    assert _fast.fast_ls(argv) is None  # another state format: rebuilt by the full command
    fast = _run(FAST, argv, home)
    assert b"error-1" in fast.stdout
    db = sqlite3.connect(home / INDEX_FILE)
    assert db.execute("SELECT value FROM info WHERE key = 'format'").fetchone()[0] == STATE_FORMAT
    db.close()
    probe = _run([sys.executable, "-c", PROBE], argv, home)
    assert probe.stderr.decode().split()[-3:-1] == ["0", "False"], probe.stderr


@pytest.mark.parametrize("summary", ["{bad", "[1]", '{"a": 1}, {"b": 2}', ""])
def test_an_unreadable_summary_row_is_handed_on_then_fast_again(home: Path, summary: str) -> None:
    argv = ["ls", "--home", str(home)]
    db = sqlite3.connect(home / INDEX_FILE)
    with db:
        db.execute("UPDATE runs SET summary = ? WHERE training_id = 'done-1'", (summary,))
    db.close()
    assert _fast.fast_ls(argv) is None
    fast = _same(argv, home)  # the full command folds that log again
    assert b"done-1" in fast.stdout
    probe = _run([sys.executable, "-c", PROBE], argv, home)
    assert probe.stderr.decode().split()[-3:-1] == ["0", "False"], probe.stderr


def test_v1_snapshot_is_healed_by_the_full_command(home: Path) -> None:
    (home / V1_FILE_NAME).write_text('{"status": "running"}')
    assert _fast.fast_ls(["ls", "--home", str(home)]) is None


CONFIGS = [
    'home = "{home}"\n',
    'home = "{rel}"\nstale_after = 30\nlost_after = 0.5\n',
    '[pulse]\nhome = "{home}"\n[pulse.file]\nmax_bytes = 65536\n',
    'home = "./{rel}/"\n[v1]\npath = "elsewhere.json"\n',
]


@pytest.mark.parametrize("text", CONFIGS)
def test_a_config_file_is_resolved_by_the_fast_path(home: Path, text: str) -> None:
    """A pulse.toml (home relative to it, thresholds, option tables) is read without click."""
    project = home.parent / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pulse.toml").write_text(text.format(home=home, rel="../home"))
    for args in (["ls"], ["ls", "--json"], ["ls", "--status", "lost"]):
        fast = _same(args, project / "sub")
        assert fast.returncode == 0
        assert b"done-1" in fast.stdout or args[-1] == "lost"
    probe = _run([sys.executable, "-c", PROBE], ["ls"], project / "sub")
    assert probe.stderr.decode().split()[-3:-1] == ["0", "False"], probe.stderr


BAD_CONFIGS = [
    ("pulse.toml", "bogus = 1\n"),
    ("pulse.toml", "home = [\n"),
    ("pulse.toml", "stale_after = -1\n"),
    ("pulse.toml", "pulse = 3\n"),
    ("pyproject.toml", "[tool.pulse]\nhome = 3\nlost_after = 'x'\n"),
    ("pyproject.toml", "[tool.pulse\n"),
]


@pytest.mark.parametrize(("name", "text"), BAD_CONFIGS)
def test_a_bad_config_file_is_reported_as_click_does(home: Path, name: str, text: str) -> None:
    project = home.parent / "project"
    project.mkdir()
    (project / name).write_text(text)
    argv = ["ls", "--home", str(home)]
    probe = _run([sys.executable, "-c", PROBE], argv, project)
    assert probe.stderr.decode().split()[-3:-1] == ["None", "False"], probe.stderr  # handed on
    fast = _same(argv, project)
    assert fast.returncode == 2
    assert b"Error" in fast.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"PULSE_STALE_AFTER": "nope"},
        {"PULSE_TRANSPORTS": "file,,v1", "PULSE_LOST_AFTER": "1"},
        {"PULSE_TRANSPORT_OPTIONS": "{bad"},
        {"PULSE_TRANSPORT_OPTIONS": '{"v1": {"path": "x.json"}}'},
        {"PULSE_HOME": "~/nowhere-ls19"},
    ],
    ids=",".join,
)
def test_environment_settings_same_as_click(home: Path, env: dict[str, str]) -> None:
    _same(["ls", "--home", str(home)], home.parent, **env)
    _same(["ls"], home.parent, **env)


def test_mirrored_constants_agree() -> None:
    assert _fast.STATE_FORMAT == STATE_FORMAT


@pytest.mark.parametrize(
    "text", [".", "./", "a", "a/", "a//b/./c", "/", "//", "///x", "//x/y", "/a/../b", "./.pulse"]
)
def test_path_str_is_pathlib(text: str) -> None:
    assert path_str(text) == str(PurePosixPath(text))
    base = path_str(text)
    assert _fast.join(base, "logs/training") == str(PurePosixPath(base) / "logs" / "training")


@pytest.mark.parametrize(
    "text", ["~", "~/x", "~//x/./y", "x/~", "~root/a", "~nobody-ls19-none/a", "/a/~"]
)
def test_expand_user_is_pathlib(text: str) -> None:
    try:
        expected = str(Path(text).expanduser())
    except RuntimeError:
        with pytest.raises(RuntimeError):
            expand_user(text)
        return
    assert expand_user(text) == expected


def test_style_is_click_style() -> None:
    for fg in (None, "red", "green", "yellow"):
        for bold in (False, True):
            assert style("x y", fg=fg, bold=bold) == click.style("x y", fg=fg, bold=bold or None)


def test_a_pyproject_is_read_on_the_fast_path(tmp_path: Path) -> None:
    """With or without a [tool.pulse] table, ls answers without click or the core."""
    home = tmp_path / "home"
    path = log_path(home, "done-1")
    path.parent.mkdir(parents=True)
    path.write_bytes(_events("done-1", time.time() - 60, "done"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "mnist"\n')
    argv = ["ls", "--home", str(home)]
    assert _run(CLICK, argv, project).returncode == 0  # builds the index
    probe = _run([sys.executable, "-c", PROBE], argv, project)
    assert probe.stderr.decode().split()[-3:] == ["0", "False", "False"], probe.stderr
    assert probe.stdout == _run(CLICK, argv, project).stdout
    (project / "pyproject.toml").write_text("[tool.pulse]\nstale_after = 30\n")
    probe = _run([sys.executable, "-c", PROBE], argv, project)
    assert probe.stderr.decode().split()[-3:] == ["0", "False", "False"], probe.stderr
    assert probe.stdout == _run(CLICK, argv, project).stdout
