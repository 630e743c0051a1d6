"""Fast start (issue 19 item 3): ``pulse ls``/``show`` import only what they use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pulse_core.codec import encode
from pulse_core.events import RunMeta, StatusChanged
from pulse_transports.cli.ls import V1_FILE_NAME
from pulse_transports.v1 import V1_FILE

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from pulse_transports.cli import main
try:
    main(args=sys.argv[1:], prog_name="pulse")
except SystemExit as exit:
    assert not exit.code, exit.code
print(sorted(m for m in sys.modules if m.startswith(("pulse_transports.v1", "rich", "structlog"))))
"""


def _imported(home: Path, *args: str) -> str:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    return done.stdout.strip().splitlines()[-1]


def _home(tmp_path: Path) -> Path:
    folder = tmp_path / "logs" / "training"
    folder.mkdir(parents=True)
    events = [RunMeta("run-1", 1, 1.0, name="x"), StatusChanged("run-1", 2, 2.0, "done")]
    (folder / "run-1.jsonl").write_bytes(b"".join(encode(e) for e in events))
    return tmp_path


def test_v1_file_name_agrees() -> None:
    assert V1_FILE_NAME == V1_FILE


def test_ls_skips_v1_rich_structlog_without_a_v1_file(tmp_path: Path) -> None:
    home = _home(tmp_path)
    assert _imported(home, "ls") == "[]"


def test_show_skips_v1_and_structlog_without_a_v1_file(tmp_path: Path) -> None:
    home = _home(tmp_path)
    imported = _imported(home, "show")
    assert "'rich'" in imported  # show renders with rich (its markup escaping)
    assert "pulse_transports.v1" not in imported
    assert "structlog" not in imported


def test_ls_reads_the_v1_file_when_there_is_one(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / V1_FILE).write_text('{"status": "done"}')
    assert "pulse_transports.v1" in _imported(home, "ls")
