"""Other local users: the home is private, and TCP and HTTP ask for the hub's token.

Real processes throughout: a ``pulse serve --tcp --http`` hub on a home it
creates, a training process reporting a run (file, v1 and socket sinks),
``pulse ls`` building the index. Modes are checked under a permissive umask
(0o000), so they come from PULSE, not from the umask. The other-user case
runs where the test runs as root: a throwaway user (``useradd``) then tries
to read the home and to reach the hub without the token, and fails; elsewhere
it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_transports.wire import PROTOCOL

WAIT = 30.0

PRODUCER = """
import sys
from pulse_core.emitter import TrainingRun
with TrainingRun("private-1", name="private run", total_steps=3) as run:
    for step in range(1, 4):
        run.progress(step=step, total_steps=3)
        run.metrics(loss=1.0 / step)
    run.status("running", "almost done")
"""

#: Run as the other user, with the system Python and only the standard library.
INTRUDER = r"""
import json, os, socket, sys, urllib.request, urllib.error
home, tcp_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PROTOCOL = int(sys.argv[4])
out = {}
def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)[:200]]
attempt("list_home", lambda: os.listdir(home))
attempt("read_token", lambda: open(os.path.join(home, "hub.token")).read())
attempt("read_log", lambda: open(os.path.join(home, "logs", "training", "private-1.jsonl")).read())
def unix():
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(home, "pulse.sock"))
    return "connected"
attempt("unix", unix)
def tcp(role, **extra):
    s = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)
    hello = {"hello": "pulse", "protocol": PROTOCOL, "role": role, **extra}
    s.sendall(json.dumps(hello).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)
attempt("tcp_subscriber", lambda: tcp("subscriber"))
attempt("tcp_producer", lambda: tcp("producer", training_id="private-1"))
def http(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
attempt("http_runs", lambda: http("/api/runs"))
attempt("http_events", lambda: http("/events"))
attempt("http_page", lambda: http("/"))
print(json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(extra)
    return env


def _umask0() -> None:
    """In the child: a umask of 0, so any mode tighter than 0666/0777 is PULSE's doing."""
    os.umask(0)


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder every user may traverse (0755); the home inside it is PULSE's to make."""
    root = Path(tempfile.mkdtemp(prefix="pp-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Served:
    """A hub on a home it creates, a finished producer, and the index built."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.home = root / "home"
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.env = clean_env(**(env or {}))
        self.out = root / "hub.out"
        cmd = [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(self.home)]
        cmd += ["--tcp", f"127.0.0.1:{self.tcp_port}", "--http", f"127.0.0.1:{self.http_port}"]
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_umask0,  # noqa: PLW1509
            )
        deadline = time.monotonic() + WAIT
        while "listening on" not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text()
            assert time.monotonic() < deadline, self.out.read_text()
            time.sleep(0.05)
        producer = subprocess.run(
            [sys.executable, "-c", PRODUCER],
            env={**self.env, "PULSE_HOME": str(self.home), "PULSE_TRANSPORTS": "file,v1,socket"},
            preexec_fn=_umask0,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert producer.returncode == 0, producer.stderr
        listing = subprocess.run(
            [sys.executable, "-m", "pulse_transports.cli", "ls", "--home", str(self.home)],
            env=self.env,
            preexec_fn=_umask0,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert listing.returncode == 0, listing.stderr

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def modes(home: Path) -> dict[str, tuple[str, int]]:
    """The kind (dir, file, socket) and permission bits of the home and all in it."""

    def kind(mode: int) -> str:
        return "dir" if stat.S_ISDIR(mode) else "socket" if stat.S_ISSOCK(mode) else "file"

    found = {".": ("dir", stat.S_IMODE(home.stat().st_mode))}
    for path in home.rglob("*"):
        mode = path.lstat().st_mode
        found[str(path.relative_to(home))] = (kind(mode), stat.S_IMODE(mode))
    return found


class TestModes:
    """Under a umask of 0, the home is 0700 and everything in it 0600 (folders 0700)."""

    def test_private_by_default(self, world: Path) -> None:
        served = Served(world)
        try:
            found = modes(served.home)
        finally:
            served.stop()
        for name in ("hub.token", "index.sqlite", "training_status.json"):
            assert name in found, sorted(found)
        assert "logs/training/private-1.jsonl" in found
        wanted = {"dir": 0o700, "file": 0o600, "socket": 0o600}
        wrong = {name: oct(mode) for name, (k, mode) in found.items() if mode != wanted[k]}
        assert not wrong, wrong

    def test_group_mode(self, world: Path) -> None:
        """``PULSE_HOME_MODE=group``: folders 2770 (setgid), files 0660, whatever the umask."""
        served = Served(world, env={"PULSE_HOME_MODE": "group"})
        try:
            found = modes(served.home)
        finally:
            served.stop()
        # The hub's socket stays 0600: it is its user's (group members use TCP + token).
        wanted = {"dir": 0o2770, "file": 0o660, "socket": 0o600}
        wrong = {name: oct(mode) for name, (k, mode) in found.items() if mode != wanted[k]}
        assert not wrong, wrong

    def test_bad_mode_is_refused(self, world: Path) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(world / "h")],
            env=clean_env(PULSE_HOME_MODE="public"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "PULSE_HOME_MODE" in result.stderr


@pytest.fixture
def other_user() -> Iterator[str]:
    """A throwaway user (root only); removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a throwaway user (useradd); run as root to check")
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd and setpriv are needed to act as another user")
    name = f"pt{uuid.uuid4().hex[:10]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)


class TestOtherUser:
    """Another local user can neither read the home nor use the hub without the token."""

    def test_other_user_is_kept_out(self, world: Path, other_user: str) -> None:
        served = Served(world)
        try:
            python = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
            ports = [str(served.tcp_port), str(served.http_port), str(PROTOCOL)]
            who = [f"--reuid={other_user}", f"--regid={other_user}", "--clear-groups"]
            result = subprocess.run(
                ["setpriv", *who, python, "-c", INTRUDER, str(served.home), *ports],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "HOME": "/"},
            )
            assert result.returncode == 0, result.stderr
            seen = json.loads(result.stdout)
        finally:
            served.stop()
        for what in ("list_home", "read_token", "read_log", "unix"):
            assert seen[what][0] == "PermissionError", (what, seen[what])
        for role in ("tcp_subscriber", "tcp_producer"):
            verdict, reply = seen[role]
            assert verdict == "ok", seen[role]
            assert reply["error"]["code"] == "unauthorized", reply
        assert seen["http_runs"] == ["ok", 401]
        assert seen["http_events"] == ["ok", 401]
        assert seen["http_page"] == ["ok", 401]
