"""The Python examples of the docs are real: they run, in order, as a reader would run them.

Per page: every ``python`` block with a ``title="NAME.py"`` is written to that file
and run as a script, in page order; then all untitled ``python`` blocks run as one
script (they build on each other). Everything runs in a fresh working directory
with a fresh ``PULSE_HOME``, and must exit 0 and print what the page says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
TITLE = re.compile(r'title="(?P<name>[\w.-]+\.py)"')
PULSE = (sys.executable, "-c", "from pulse_transports.cli import main; main(prog_name='pulse')")


def blocks(page: str) -> list[tuple[str | None, str]]:
    """The page's python blocks in order, as ``(file name or None, code)``."""
    text = (DOCS / page).read_text("utf-8")
    out = []
    for match in FENCE.finditer(text):
        indent = match.group("indent")
        body = textwrap.dedent(match.group("body")) if indent else match.group("body")
        title = TITLE.search(match.group("info"))
        out.append((title.group("name") if title else None, body))
    return out


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PULSE_HOME"] = str(home)
    return env


def run_page(page: str, work: Path) -> str:
    """Run a page's examples in *work*; return everything they printed."""
    home = work / "pulse-home"
    env = environment(home)
    found = blocks(page)
    assert found, f"{page} has no python examples"
    output = []
    for name, code in found:
        if name is not None:
            (work / name).write_text(code, "utf-8")
    scripts = [name for name, _ in found if name is not None]
    session = "\n\n".join(code for name, code in found if name is None)
    if session:
        (work / "session.py").write_text(session, "utf-8")
        scripts.append("session.py")
    for script in scripts:
        result = subprocess.run(
            [sys.executable, script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, f"{page}: {script} failed:\n{result.stdout}\n{result.stderr}"
        output.append(result.stdout)
    return "\n".join(output)


class TestQuickstart:
    """Every example of the quickstart runs as written, and the commands it shows work."""

    def test_python_examples(self, tmp_path: Path) -> None:
        """train.py reports a run that ends done; the readers see it and the v1 keys."""
        output = run_page("quickstart.md", tmp_path)
        assert "['epoch', 'loss', 'message', 'status', 'timestamp', 'total_epochs']" in output
        rows = [line.split() for line in output.splitlines() if line.count(" ") == 4]
        assert ["done", "ended", "3"] in [row[1:4] for row in rows]
        assert ["error", "ended"] in [row[1:3] for row in rows]

    def test_commands(self, tmp_path: Path) -> None:
        """pulse demo, ls, show, v1 --json and watch --once work as the page says."""
        home = tmp_path / "pulse-home"
        env = environment(home)

        def pulse(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*PULSE, *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )

        assert pulse("demo", "--fast", "--epochs", "1").returncode == 0
        listing = pulse("ls", "--json")
        assert listing.returncode == 0
        (run,) = json.loads(listing.stdout)["runs"]
        assert run["status"] == "done"
        assert pulse("show", run["training_id"]).returncode == 0
        snapshot = json.loads(pulse("v1", "--json").stdout)
        assert snapshot["status"] == "done"
        assert pulse("watch", run["training_id"], "--once").returncode == 0
        failed = pulse("demo", "--fast", "--epochs", "3", "--fail-at", "2")
        assert failed.returncode == 1
        assert "DATASET_NOT_FOUND" in failed.stdout


class TestGuides:
    """The examples of the other pages run too."""

    def test_flow_manager(self, tmp_path: Path) -> None:
        """Start, follow, wait, record, cancel, retry, query and in-process steps."""
        output = run_page("guides/flow-manager.md", tmp_path)
        assert "done success 0" in output
        assert "cancelled" in output
        assert "attempt 2 done" in output
        assert "eval 2 success" in output
        assert "done success\n" in output

    def test_migration(self, tmp_path: Path) -> None:
        """The bridge example bridges a v1 snapshot; the hybrid reader shows each run once."""
        output = run_page("migration.md", tmp_path)
        assert "v1-20261129-013724-000-1 done 0.0123" in output
        assert "v1-20261129-013724-000-1 v2 ended True done" in output
        assert "'status': 'done'" in output

    def test_transport_plugin(self, tmp_path: Path) -> None:
        """The example sink works with a real TrainingRun and the test fakes."""
        output = run_page("guides/transport-plugin.md", tmp_path)
        assert "[t] plugin-test: error out of memory" in output
        assert "failed writes contained" in output

    def test_event_model(self, tmp_path: Path) -> None:
        """The folding example prints what the page says."""
        assert "running 0.25" in run_page("concepts/events.md", tmp_path)
