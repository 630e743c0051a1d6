"""The file source passes the RunSource contract, and the registry finds sources by name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pulse_core.errors import ConfigError
from pulse_core.ports import RunSource
from pulse_transports.cli import main
from pulse_transports.config import load_config
from pulse_transports.file import FileSink
from pulse_transports.filesource import FileSource
from pulse_transports.registry import (
    BUILTIN_SOURCES,
    available_sources,
    load_source,
    make_source,
)
from pulse_transports.testing import MakeSink, RunSourceContract, write_run


class TestFileSourceContract(RunSourceContract):
    """FileSource over a temporary home runs the whole contract."""

    @pytest.fixture
    def source(self, tmp_home: Path) -> Iterator[FileSource]:
        """A file source on the test's home."""
        source = FileSource(tmp_home, tick=0.1)
        yield source
        source.close()

    @pytest.fixture
    def make_sink(self, tmp_home: Path) -> MakeSink:
        """File sinks writing the logs the source reads."""
        return lambda: FileSink(home=tmp_home, fsync=False, interval=0.0)


class TestRegistry:
    """``pulse.sources`` names load the sources; unknown names fail with the choices."""

    def test_builtin_names(self) -> None:
        """``file`` and ``nats`` are known sources."""
        assert {"file", "nats"} <= set(available_sources())
        assert load_source("file") is FileSource

    def test_make_file_source_from_config(self, tmp_home: Path) -> None:
        """The file source is built on the configured home."""
        config = load_config(env={"PULSE_HOME": str(tmp_home)})
        source = make_source("file", config)
        assert isinstance(source, RunSource)
        assert isinstance(source, FileSource)
        assert source.home == tmp_home

    def test_unknown_source(self) -> None:
        """An unknown name is a ConfigError listing the valid ones."""
        with pytest.raises(ConfigError, match=r"valid choices: .*file"):
            load_source("carrier-pigeon")

    def test_a_bridge_is_not_a_run_source(self, tmp_home: Path) -> None:
        """``v1file`` writes runs, it does not read them: refused by name."""
        config = load_config(env={"PULSE_HOME": str(tmp_home)})
        with pytest.raises(ConfigError, match="not a RunSource"):
            make_source("v1file", config)


class TestSourceOption:
    """``pulse ls/show/watch --source`` picks the reader; bad combinations are usage errors."""

    def test_connection_options_need_nats(self, tmp_home: Path) -> None:
        """A NATS option with the file source is refused, naming the option."""
        result = CliRunner().invoke(main, ["ls", "--home", str(tmp_home), "--url", "nats://x"])
        assert result.exit_code == 2
        assert "--url apply to --source nats" in result.output

    def test_unknown_source(self, tmp_home: Path) -> None:
        """An unknown source name is a usage error listing the valid ones."""
        result = CliRunner().invoke(main, ["ls", "--home", str(tmp_home), "--source", "nope"])
        assert result.exit_code == 2
        assert "unknown source 'nope'" in result.output

    def test_plugin_source_lists_and_shows(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A source found by name (here the file source under another name) serves ls and show."""
        monkeypatch.setitem(BUILTIN_SOURCES, "logs", "pulse_transports.filesource:FileSource")
        write_run(lambda: FileSink(home=tmp_home, fsync=False), "plugin-run")
        home = ["--home", str(tmp_home)]
        listed = CliRunner().invoke(main, ["ls", *home, "--source", "logs", "--json"])
        assert listed.exit_code == 0, listed.output
        doc = json.loads(listed.output)
        assert doc["source"] == {"kind": "logs"}
        assert [r["training_id"] for r in doc["runs"]] == ["plugin-run"]
        shown = CliRunner().invoke(
            main, ["show", "plugin-run", *home, "--source", "logs", "--json"]
        )
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["view"]["status"] == "done"
        missing = CliRunner().invoke(main, ["show", "no-run", *home, "--source", "logs"])
        assert missing.exit_code == 3
        watched = CliRunner().invoke(main, ["watch", *home, "--source", "logs"])
        assert watched.exit_code == 2
