"""The import-linter contracts in pyproject.toml name every module they must guard.

``lint-imports`` (run by ``.ci/run``) checks the contracts; these tests make
sure the contracts cannot rot: a new core module, a new private module of an
adapter package or a new top-level adapter module has to be named in them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pulse_core
import pulse_transports

ROOT = Path(pulse_core.__file__).parent.parent
CORE_DIR = Path(pulse_core.__file__).parent
TRANSPORTS_DIR = Path(pulse_transports.__file__).parent
#: Library modules may not grow past this many lines (issue 18).
MAX_LINES = 500


def contracts() -> dict[str, dict[str, Any]]:
    """The import-linter contracts of pyproject.toml, by name."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        config = tomllib.load(handle)["tool"]["importlinter"]
    return {contract["name"]: contract for contract in config["contracts"]}


def private_modules(package: Path, prefix: str) -> set[str]:
    """The ``_private`` modules and subpackages directly inside *package*."""
    found = set()
    for path in package.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        is_module = path.suffix == ".py" or (path / "__init__.py").exists()
        if is_module and name.startswith("_") and not name.startswith("__"):
            found.add(f"{prefix}.{name}")
    return found


class TestContracts:
    """Every module the architecture rules are about is named in a contract."""

    def test_every_pure_module_is_checked(self) -> None:
        """All of pulse_core but the emitter and its logger is a source of the purity contract."""
        pure = contracts()["The pure core imports no I/O modules"]
        expected = {
            f"pulse_core.{path.stem}"
            for path in CORE_DIR.glob("*.py")
            if path.stem not in ("__init__", "_log")
        }
        assert set(pure["source_modules"]) == expected
        assert {"os", "time", "socket", "threading", "structlog", "pathlib"} <= set(
            pure["forbidden_modules"]
        )

    def test_emitter_privates_are_guarded(self) -> None:
        """Every private module of the emitter package is forbidden outside it."""
        guard = contracts()["Only the emitter package imports its private modules"]
        expected = private_modules(CORE_DIR / "emitter", "pulse_core.emitter")
        assert expected
        assert set(guard["forbidden_modules"]) == expected

    def test_adapter_privates_are_guarded(self) -> None:
        """Each adapter package's private modules are forbidden to every other adapter module."""
        named = contracts()
        top = {
            f"pulse_transports.{path.stem}"
            for path in TRANSPORTS_DIR.glob("*.py")
            if path.stem != "__init__"
        }
        packages = sorted(
            path.name
            for path in TRANSPORTS_DIR.iterdir()
            if (path / "__init__.py").exists() and not path.name.startswith("_")
        )
        checked = 0
        for package in packages:
            privates = private_modules(TRANSPORTS_DIR / package, f"pulse_transports.{package}")
            if not privates:
                continue
            contract = named[f"Adapters never import pulse_transports.{package}'s private modules"]
            assert set(contract["forbidden_modules"]) == privates
            others = {f"pulse_transports.{other}" for other in packages if other != package}
            assert set(contract["source_modules"]) == others | top
            checked += 1
        assert checked >= 3  # nats, cli, integrations at least

    def test_core_never_imports_adapters(self) -> None:
        """The direction contract covers the whole core package."""
        contract = contracts()["The core never imports the adapters"]
        assert contract["source_modules"] == ["pulse_core"]
        assert contract["forbidden_modules"] == ["pulse_transports"]


class TestModuleSize:
    """The emitter package and the typed domain stay small enough to read."""

    def test_emitter_modules_small(self) -> None:
        """No module of the emitter package, nor the domain modules, is over 500 lines."""
        paths = [*(CORE_DIR / "emitter").glob("*.py")]
        paths += [CORE_DIR / f"{name}.py" for name in ("events", "state", "lifecycle", "reducer")]
        sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in paths}
        assert len(sizes) >= 10
        assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
