"""The architecture page names only modules that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _resolves(name: str) -> bool:
    """True if *name* is a module, or an attribute path inside one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj: object = importlib.import_module(module)
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


class TestArchitecturePage:
    """docs/concepts/architecture.md matches the code."""

    def test_every_named_module_exists(self) -> None:
        """Each `pulse_core...`/`pulse_transports...` module path on the page can be found."""
        text = (DOCS / "concepts" / "architecture.md").read_text()
        names = set(
            re.findall(r"`((?:pulse_core|pulse_transports)(?:\.[A-Za-z_][A-Za-z0-9_]*)*)", text)
        )
        assert len(names) > 20
        missing = [name for name in sorted(names) if not _resolves(name)]
        assert missing == []

    def test_in_the_navigation(self) -> None:
        """The page is reachable from the site's navigation."""
        nav = (DOCS.parent / "mkdocs.yml").read_text()
        assert "concepts/architecture.md" in nav
