"""The import direction is the architecture: the pure core imports no I/O and no adapters."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

import pulse_core

CORE_DIR = Path(pulse_core.__file__).parent
#: Every core module, the emitter package's included ("emitter._run", ...).
CORE_MODULES = sorted(
    ".".join(path.relative_to(CORE_DIR).with_suffix("").parts)
    for path in CORE_DIR.rglob("*.py")
    if path.name != "__init__.py" or path.parent != CORE_DIR
)
#: Modules that must stay pure: no I/O, no clock, no logging, no threads. That is
#: every core module except the emitter package and the logger it uses.
IMPURE: Final = ("_log", "emitter")
PURE_MODULES = [name for name in CORE_MODULES if name.split(".")[0] not in IMPURE]
IO_MODULES = frozenset(
    {
        "os",
        "time",
        "socket",
        "pathlib",
        "asyncio",
        "structlog",
        "threading",
        "subprocess",
        "io",
    }
)


def imported_modules(path: Path) -> set[str]:
    """Every module name *path* imports, anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = ".".join(["pulse_core", *filter(None, [node.module])])
                found.update(f"{base}.{alias.name}" for alias in node.names)
                found.add(base)
            elif node.module is not None:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_path(module: str) -> Path:
    """The file of core module *module* ("emitter.__init__" is the package's face)."""
    return CORE_DIR.joinpath(*module.split(".")).with_suffix(".py")


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


class TestImportDirection:
    """pulse_core never imports pulse_transports; the pure modules import no I/O."""

    def test_core_modules_found(self) -> None:
        """The scan sees the core modules (a wrong path would pass vacuously)."""
        assert {"events", "reducer", "policy", "ports"} <= set(PURE_MODULES)
        assert {"emitter._run", "emitter._hooks", "emitter.__init__"} <= set(CORE_MODULES)

    @pytest.mark.parametrize("module", CORE_MODULES)
    def test_no_transports(self, module: str) -> None:
        """No core module imports pulse_transports, at top level or inside a function."""
        names = imported_modules(module_path(module))
        assert "pulse_transports" not in top_level(names)

    @pytest.mark.parametrize("module", PURE_MODULES)
    def test_no_io(self, module: str) -> None:
        """A pure module names none of the I/O modules in any import statement."""
        names = imported_modules(module_path(module))
        assert top_level(names) & IO_MODULES == set()

    def test_scanner_sees_both_forms(self, tmp_path: Path) -> None:
        """The scanner catches `import x`, `from x import y` and imports inside functions."""
        sample = tmp_path / "sample.py"
        sample.write_text(
            "import os.path\n"
            "from time import monotonic\n"
            "def f():\n"
            "    import pulse_transports.file\n"
            "    from asyncio import sleep\n",
            encoding="utf-8",
        )
        assert top_level(imported_modules(sample)) == {
            "os",
            "time",
            "pulse_transports",
            "asyncio",
        }

    def test_fresh_interpreter(self) -> None:
        """Importing every pure module in a fresh process loads no pulse_transports or structlog."""
        code = (
            "import json, sys\n"
            + "".join(f"import pulse_core.{name}\n" for name in PURE_MODULES)
            + "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('pulse_transports', 'structlog'))))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert json.loads(result.stdout) == []
