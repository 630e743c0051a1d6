"""The fast ``pulse show ID`` (issue 19 item 3): the click command's bytes, without click or rich.

Every case runs the real ``pulse`` entry (``python -m pulse_transports.cli``)
and the click group in new processes over the same home and compares stdout,
stderr and the exit code; a probe tells which cases the short path answered
(click and rich never imported) and which it handed on. The plain rendering
is also checked against rich itself on hostile text (markup, emoji codes,
control characters).
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastcli import CLICK, FAST, RICH_ENV
from fastcli import env as _env
from fastcli import run as _run
from fastcli import same as _same
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse_core.codec import encode
from pulse_core.events import (
    ErrorReported,
    Event,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_transports.cli import _detail, _fast
from pulse_transports.cli.ls import V1_FILE_NAME
from pulse_transports.file import FileSink, log_path
from pulse_transports.history import load_run

PROBE = """
import sys
from pulse_transports.cli._fast import fast
code = fast(sys.argv[1:])
modules = ("click", "rich", "pulse_transports.history")
print(code, *(name in sys.modules for name in modules), file=sys.stderr)
"""


def _probe(argv: list[str], cwd: Path, **env: str) -> list[str]:
    """``[code, click imported, rich imported, history imported]`` of the short path."""
    done = _run([sys.executable, "-c", PROBE], argv, cwd, **env)
    return done.stderr.decode().split()[-4:]


def _events(
    tid: str, start: float, end: str | None, *, message: str = "", flow: str | None = None
) -> bytes:
    out: list[Event] = [
        RunMeta(tid, 1, start, name="fast show", total_epochs=3, flow_id="f", flow_run_id=flow),
        StatusChanged(tid, 2, start + 1, "running", message=message),
    ]
    for i in range(6):
        out.append(Progress(tid, 3 + 2 * i, start + 2 + i, epoch=1 + i // 2, step=i))
        out.append(Metrics(tid, 4 + 2 * i, start + 2 + i, loss=1.5 / (i + 1), extra={"acc": i}))
    if end == "error":
        details = {"traceback": "Traceback...\nRuntimeError: boom", "rank": 3, "note": message}
        out.append(
            ErrorReported(
                tid,
                15,
                start + 9,
                error_code="OOM",
                message=f"out of memory {message}",
                details=details,
            )
        )
    if end is not None:
        out.append(StatusChanged(tid, 17, start + 10, end, message=message))  # seq 16 skipped
    return b"".join(encode(e) for e in out)


#: Runs whose text rich prints as its characters (the short path answers them).
PLAIN = {
    "done-1": ("done", "all good", None),
    "error-1": ("error", "naïve ✓ 12:30 a:b {x} ]", "fr-1"),
    "cancel-1": ("cancelled", "", "fr-1"),
    "lost-1": (None, "still going", None),
}
#: Runs whose text only rich can print (the short path hands them on).
HOSTILE = {
    "markup-1": ("done", "[bold]not bold[/] [red]", None),
    "emoji-1": ("error", "ok :smile: :thumbs_up:", None),
    "tab-1": ("done", "a\tb", None),
    "escape-1": ("done", "ends with \\", None),
    "control-1": ("done", "bell \x07 esc \x1b[31m", None),
    "colon-1": ("done", "x", "a:b:c"),
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Ended and lost runs, plain and hostile, with the index built by the click command."""
    home = tmp_path / "home"
    now = time.time()
    for offset, (tid, (end, message, flow)) in enumerate({**PLAIN, **HOSTILE}.items()):
        path = log_path(home, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_events(tid, now - 900 + offset, end, message=message, flow=flow))
    done = _run(CLICK, ["ls", "--home", str(home)], tmp_path)
    assert done.returncode == 0, done.stderr
    return home


ARGS = [[], ["--json"], ["--source", "file"], ["--source=file", "--json"]]


@pytest.mark.parametrize("tid", sorted(PLAIN))
@pytest.mark.parametrize("args", ARGS, ids=lambda a: " ".join(a) or "plain")
def test_same_bytes_as_click_without_click_or_rich(home: Path, tid: str, args: list[str]) -> None:
    argv = ["show", tid, "--home", str(home), *args]
    fast = _same(argv, home.parent)
    assert fast.returncode == 0
    assert tid.encode() in fast.stdout
    code, click, rich, history = _probe(argv, home.parent)
    assert (code, click, rich) == ("0", "False", "False")
    # Ended runs come from their index row; the lost one is judged through history.
    assert history == str(tid == "lost-1")


@pytest.mark.parametrize("tid", sorted(HOSTILE))
def test_hostile_text_is_printed_by_rich(home: Path, tid: str) -> None:
    argv = ["show", tid, "--home", str(home)]
    fast = _same(argv, home.parent)
    assert fast.returncode == 0
    assert _probe(argv, home.parent)[:2] == ["None", "False"]
    json_argv = [*argv, "--json"]
    _same(json_argv, home.parent)
    assert _probe(json_argv, home.parent)[:3] == ["0", "False", "False"]  # JSON has no markup


@pytest.mark.parametrize(
    "argv",
    [
        ["--home", "{home}", "show", "done-1"],
        ["--home", "/nowhere", "show", "--json", "--home", "{home}", "error-1"],
        ["show", "--home={home}", "cancel-1", "--json"],
    ],
)
def test_group_home_and_option_order(home: Path, argv: list[str]) -> None:
    argv = [a.format(home=home) for a in argv]
    _same(argv, home.parent)
    assert _probe(argv, home.parent)[:2] == ["0", "False"]


HANDED_ON = [
    ["show"],
    ["show", "--help"],
    ["show", "not an id!"],
    ["show", "-x"],
    ["show", "nope-1"],
    ["show", "done-1", "error-1"],
    ["show", "done-1", "--wat"],
    ["show", "done-1", "--source", "nats"],
    ["show", "done-1", "--url", "nats://127.0.0.1:1"],
    ["-v", "show", "done-1"],
]


@pytest.mark.parametrize("args", HANDED_ON, ids=" ".join)
def test_anything_else_is_handed_to_click(home: Path, args: list[str]) -> None:
    argv = [*args, "--home", str(home)]
    assert _probe(argv, home.parent)[:2] == ["None", "False"]
    _same(argv, home.parent)


def test_missing_home_and_v1_snapshot_are_handed_on(home: Path, tmp_path: Path) -> None:
    argv = ["show", "done-1", "--home", str(tmp_path / "missing")]
    assert _same(argv, tmp_path).returncode == 3
    (home / V1_FILE_NAME).write_text('{"status": "running"}')
    argv = ["show", "done-1", "--home", str(home)]
    assert _probe(argv, home.parent)[:2] == ["None", "False"]


def test_a_configured_v1_snapshot_is_handed_on(home: Path) -> None:
    """``[v1] path`` (absolute here) names the snapshot the full command heals."""
    snapshot = home.parent / "elsewhere" / "status.json"
    snapshot.parent.mkdir()
    project = home.parent / "project"
    project.mkdir()
    (project / "pulse.toml").write_text(f'home = "{home}"\n[v1]\npath = "{snapshot}"\n')
    assert _probe(["show", "done-1"], project)[:2] == ["0", "False"]
    snapshot.write_text('{"status": "running"}')
    assert _probe(["show", "done-1"], project)[:2] == ["None", "False"]
    _same(["show", "done-1"], project)


def test_a_terminal_or_forced_colour_is_rich(home: Path) -> None:
    argv = ["show", "done-1", "--home", str(home)]
    assert _probe(argv, home.parent, FORCE_COLOR="1")[:2] == ["None", "False"]
    fast = _same(argv, home.parent, FORCE_COLOR="1")
    assert b"\x1b[" in fast.stdout
    main, child = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *argv],
            stdout=child,
            stderr=subprocess.PIPE,
            cwd=home.parent,
            env=_env(),
            timeout=120,
            check=False,
        )
    finally:
        os.close(child)
        os.close(main)
    assert done.stderr.decode().split()[-4:-2] == ["None", "False"]


def test_a_changed_log_is_read_through_history(home: Path) -> None:
    """A run the index holds as running that has ended since: folded again, same bytes."""
    tid = "grown-1"
    data = _events(tid, time.time() - 100, "done")
    lines = data.splitlines(keepends=True)
    path = log_path(home, tid)
    path.write_bytes(b"".join(lines[:-1]))
    assert _run(CLICK, ["ls", "--home", str(home)], home).returncode == 0
    with path.open("ab") as handle:
        handle.write(lines[-1])
    argv = ["show", tid, "--home", str(home)]
    assert _probe(argv, home)[:2] == ["0", "False"]  # updates the index
    fast = _same(argv, home)
    assert b"done" in fast.stdout


def test_a_live_run_is_alive(home: Path) -> None:
    sink = FileSink(home=home, fsync=False, interval=0.0)
    sink.open("live-1")
    try:
        sink.write(RunMeta("live-1", 1, time.time(), name="live"))
        sink.write(StatusChanged("live-1", 2, time.time(), "running"))
        argv = ["show", "live-1", "--home", str(home), "--json"]
        import orjson

        fast = _run(FAST, argv, home)
        slow = _run(CLICK, argv, home)
        assert orjson.loads(fast.stdout)["liveness"] == "alive"
        for doc in (orjson.loads(fast.stdout), orjson.loads(slow.stdout)):
            assert (doc["liveness"], doc["writer_alive"], doc["view"]["status"]) == (
                "alive",
                True,
                "running",
            )
        assert _probe(argv, home) == ["0", "False", "False", "True"]
    finally:
        sink.close()


def test_no_emoji_is_named_by_a_minutes_number() -> None:
    """plain_text lets ``:NN:`` through (clock times): no emoji has such a name."""
    from rich._emoji_codes import EMOJI

    assert not [name for name in EMOJI if name.isdigit() and len(name) <= 2]


# -- the plain rendering against rich itself -------------------------------------------


def _document(tmp_path: Path) -> dict[str, Any]:
    path = log_path(tmp_path, "doc-1")
    path.parent.mkdir(parents=True)
    path.write_bytes(_events("doc-1", 1_767_225_600.0, "error", message="m", flow="fr"))
    record = load_run(tmp_path, "doc-1")
    return {**_detail.run_document(record, 1_767_226_000.0), "now": 1_767_226_000.0}


def _rich(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    from pulse_transports.cli.show import render

    for name in RICH_ENV:
        monkeypatch.delenv(name, raising=False)
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    render(doc)
    monkeypatch.undo()
    return buffer.getvalue()


def _with_text(doc: dict[str, Any], text: str) -> dict[str, Any]:
    view = doc["view"]
    error = {**view["errors"][0], "message": text, "details": {text[:5] or "k": text}}
    return {
        **doc,
        "view": {
            **view,
            "message": text,
            "run": {**view["run"], "name": text},
            "metrics": {**view["metrics"], text or "x": 1.0},
            "timeline": [{**view["timeline"][0], "message": text}, *view["timeline"][1:]],
            "errors": [error],
            "flow": {**view["flow"], "flow_step_id": text},
        },
    }


#: Pieces of hostile and ordinary text, joined: markup, emoji codes, escapes, controls.
PIECES = [
    "a",
    "Z",
    "0",
    "1",
    " ",
    ":",
    "[",
    "]",
    "/",
    "\\",
    "-",
    "\t",
    "\x07",
    "\x1b",
    "é",
    "✓",
    "smile",
    "100",
    "thumbs_up",
    "bold",
    ":smile:",
    ":100:",
    ":12:",
    "[bold]",
    "[/]",
    "\u200d",
    "\u2028",
    "\n",
]
TEXTS = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_plain_text_is_what_rich_prints(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    doc = _with_text(_document(tmp_path_factory.mktemp("doc")), text)
    plain = _detail.plain_text(doc)
    with pytest.MonkeyPatch.context() as monkeypatch:
        printed = _rich(doc, monkeypatch)
    if plain is not None:
        assert plain == printed


@pytest.mark.parametrize("text", ["", "plain words", "12:30:45 and a:b", "naïve ✓ ] {x}"])
def test_ordinary_text_is_plain(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _with_text(_document(tmp_path), text)
    plain = _detail.plain_text(doc)
    assert plain is not None
    assert plain == _rich(doc, monkeypatch)


@pytest.mark.parametrize("text", ["[b]x", ":smile:", "a\\", "tab\there", "\x1b[0m", ":100:"])
def test_rich_text_is_not_plain(tmp_path: Path, text: str) -> None:
    assert _detail.plain_text(_with_text(_document(tmp_path), text)) is None


def test_parse_show() -> None:
    assert _fast.parse(["show", "x", "--json"], "show") == {
        "json": True,
        "status": None,
        "flow_run_id": None,
        "limit": None,
        "id": "x",
        "home": None,
    }
    assert _fast.parse(["show", "x", "--status", "done"], "show") is None
    assert _fast.parse(["ls", "x"]) is None


@pytest.mark.parametrize(
    "text", ["a", "A.b-c_d", "0", "", ".a", "-a", "_a", "a b", "é", "a" * 128, "a" * 129, "a/b"]
)
def test_valid_id_is_the_core_rule(text: str) -> None:
    from pulse_core.errors import InvalidTrainingId
    from pulse_core.events import validate_training_id

    try:
        validate_training_id(text)
    except InvalidTrainingId:
        assert not _fast.valid_id(text)
    else:
        assert _fast.valid_id(text)


@pytest.mark.parametrize(
    "text", ["][/", ":][/", "a[/", "[/: aa]", "\\[b]", "\\\\[b]", "[", "[/]", "[bold][/"]
)
def test_texts_side_by_side_never_make_a_tag(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detail's key and value are escaped apart: together they must not make a tag.

    ``][/`` as key and value printed ``][/: ][/``, whose ``[/: ]`` rich read as a
    closing tag: ``pulse show`` stopped with a MarkupError (found by the property
    test above).
    """
    doc = _with_text(_document(tmp_path), text)
    printed = _rich(doc, monkeypatch)
    assert f"{text[:5]}: {text}" in printed
