"""Developer tasks: tests, lint, typecheck, specs, bench (``nox -s NAME``)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "specs"]
nox.options.default_venv_backend = "venv"


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "pulse_core", "pulse_transports")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over both packages."""
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session(python="3.11")
def imports(session: nox.Session) -> None:
    """import-linter: the pure core, the core/adapter direction, private modules."""
    session.install("-e", ".[lint]")
    session.run("lint-imports")


@nox.session(python="3.11")
def specs(session: nox.Session) -> None:
    """Regenerate the conformance vectors and spec tables; fail if anything changed."""
    session.install("-e", ".[test]")
    session.run("python", "specs/generate.py", "--check")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print their figures."""
    session.install("-e", ".[test]")
    for script in sorted(p.name for p in Path("tests/bench").glob("bench_*.py")):
        session.run("python", f"tests/bench/{script}", *session.posargs)
