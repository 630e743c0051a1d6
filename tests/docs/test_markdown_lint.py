"""The Markdown lint that CI runs passes, and catches a bad code fence."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYMARKDOWN = Path(sys.executable).parent / "pymarkdown"
LINT = [
    str(PYMARKDOWN),
    "--config",
    str(ROOT / ".pymarkdown.json"),
    "--add-plugin",
    str(ROOT / "scripts" / "mdlint_fences.py"),
    "scan",
]


def lint(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LINT, *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class TestMarkdownLint:
    """``.ci/run``'s Markdown lint."""

    def test_docs_and_readme_are_clean(self) -> None:
        """The lint passes on docs/ and the README, as CI runs it."""
        result = lint("-r", "docs", "README.md")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_closing_fence_with_text_is_caught(self, tmp_path: Path) -> None:
        """The web guide's old 'Latency' bug (text after a closing fence) fails the lint."""
        page = tmp_path / "page.md"
        page.write_text(
            "# Title\n\nSome text.\n\n```text\n a  b\n 1  2\n``` `--quick` runs 30 updates;\n"
            "more text.\n",
            "utf-8",
        )
        result = lint(page)
        assert result.returncode != 0
        assert "PLS001" in result.stdout
        assert f"{page}:5:1" in result.stdout

    def test_ci_runs_it(self) -> None:
        """``.ci/run`` runs exactly this lint, and the lint extra installs the tool."""
        ci = (ROOT / ".ci" / "run").read_text("utf-8")
        assert "pymarkdown --config .pymarkdown.json --add-plugin scripts/mdlint_fences.py" in ci
        pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
        assert re.search(r'^lint = \[.*"pymarkdownlnt', pyproject, re.MULTILINE)


class TestReadmeSetUp:
    """The README keeps exactly two set-up commands: the main job and the tests."""

    def test_two_commands(self) -> None:
        """The set-up section's code blocks are ``bash scripts/demo`` and ``bash scripts/test``."""
        readme = (ROOT / "README.md").read_text("utf-8")
        section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
        assert [b.strip() for b in blocks] == ["bash scripts/demo", "bash scripts/test"]

    def test_demo_script_uses_a_venv(self) -> None:
        """scripts/demo makes and uses ./.venv (PEP 668 safe) and runs pulse demo."""
        script = (ROOT / "scripts" / "demo").read_text("utf-8")
        assert "python3 -m venv .venv" in script
        assert ". .venv/bin/activate" in script
        assert "pulse demo" in script
