"""The docs build with ``mkdocs build --strict``; their generated parts match the code."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from pulse_core.lifecycle import TABLE
from pulse_transports.cli import main
from pulse_transports.config import KEYS
from pulse_transports.registry import available, load_factory

ROOT = Path(__file__).resolve().parents[2]


def page_text(site: Path, page: str) -> str:
    """The visible text of a built page (tags removed, entities decoded)."""
    raw = (site / page / "index.html").read_text("utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site once, strictly (any warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


class TestBuild:
    """The strict build succeeds and leaves no marker unexpanded."""

    def test_every_page_built(self, site: Path) -> None:
        """Each page of the nav, hand-written or generated, is in the site."""
        for page in (
            "quickstart",
            "concepts/lifecycle",
            "guides/flow-manager",
            "guides/frameworks",
            "migration",
            "operations",
            "reference/configuration",
            "reference/cli",
            "protocol/protocol",
            "protocol/hub-protocol",
            "protocol/schema",
            "protocol/vectors",
        ):
            assert (site / page / "index.html").is_file(), page

    def test_no_marker_left(self, site: Path) -> None:
        """No ``<!-- pulse:... -->`` marker survives into the HTML."""
        for path in site.rglob("*.html"):
            assert "<!-- pulse:" not in path.read_text("utf-8"), path


class TestGenerated:
    """Generated pages say what the code says."""

    def test_lifecycle_diagram_and_table(self, site: Path) -> None:
        """Every transition of the machine is in the diagram and in the table."""
        text = page_text(site, "concepts/lifecycle")
        for (source, trigger), dest in TABLE.items():
            assert f"{source} --> {dest}: {trigger}" in text
        assert text.count(" --> ") == len(TABLE) + 4  # plus [*] -> idle and 3 ends

    def test_configuration_keys_and_options(self, site: Path) -> None:
        """Every config key, its env var, and every transport option is listed."""
        text = page_text(site, "reference/configuration")
        for key in KEYS:
            assert key.name in text
            assert key.env is not None
            assert key.env in text
        for name in available():
            options = getattr(load_factory(name), "OPTIONS", None) or {}
            section = text.split(f"{name}¶", 1)[1]
            for option in options:
                assert option in section, (name, option)

    def test_cli_reference(self, site: Path) -> None:
        """Every command and every option of the click tree is documented."""
        text = page_text(site, "reference/cli")
        ctx = click.Context(main, info_name="pulse")
        commands = main.list_commands(ctx)
        assert "bridge" in commands
        for name in commands:
            command = main.get_command(ctx, name)
            assert command is not None
            assert f"pulse {name}¶" in text
            options = [p for p in command.params if isinstance(p, click.Option)]
            for option in options:
                for opt in [*option.opts, *option.secondary_opts]:
                    assert opt in text, (name, opt)

    def test_protocol_published_verbatim(self, site: Path) -> None:
        """The spec, schemas and vectors are copied at build time, byte for byte."""
        text = page_text(site, "protocol/protocol")
        spec = (ROOT / "specs" / "protocol.md").read_text("utf-8")
        for heading in re.findall(r"^## (.+)$", spec, flags=re.MULTILINE):
            assert heading in text
        for folder in ("schema", "vectors"):
            for source in (ROOT / "specs" / folder).iterdir():
                copied = site / "protocol" / folder / source.name
                assert copied.read_bytes() == source.read_bytes(), source.name
        vectors = page_text(site, "protocol/vectors")
        for expected in (ROOT / "specs" / "vectors").glob("*.expected.json"):
            assert expected.name.removesuffix(".expected.json") in vectors


def _gen_pages() -> Any:
    """docs/gen_pages.py as a module (it is a mkdocs hook, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pulse_gen_pages", ROOT / "docs" / "gen_pages.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestGeneratedWithoutExtras:
    """The generated pages build with the ``docs`` extra alone (issue 20)."""

    def test_missing_transport_is_listed_not_fatal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A transport whose extra is missing (nats without nats-py) is named, not a build error."""
        from pulse_core.errors import ConfigError
        from pulse_transports import registry

        real = registry.load_factory

        def without_nats(name: str) -> Any:
            if name == "nats":
                raise ConfigError(
                    "transport 'nats' failed to load: the nats transport needs nats-py"
                )
            return real(name)

        monkeypatch.setattr(registry, "load_factory", without_nats)
        pages = _gen_pages()
        options = pages.transport_options()
        intervals = pages.sink_intervals()
        assert "### `nats`" in options
        assert "needs nats-py" in options
        assert "| `nats` | (not installed here) | - |" in intervals
        assert "### `file`" in options

    def test_every_json_option_has_its_shape(self) -> None:
        """The CLI reference documents the --json output of every command that has --json."""
        reference = _gen_pages().cli_reference()
        sections = reference.split("\n## ")
        with_json = [s for s in sections if "`--json`" in s.split("**JSON output**")[0]]
        assert len(with_json) >= 6
        for section in with_json:
            assert "**JSON output** (`--json`)" in section, section.splitlines()[0]
        show = next(s for s in sections if s.startswith("`pulse show`"))
        assert '"coalesced": int' in show
