"""The file source passes the RunSource contract, and the registry finds sources by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_core.errors import ConfigError
from pulse_core.ports import RunSource
from pulse_transports.config import load_config
from pulse_transports.file import FileSink
from pulse_transports.filesource import FileSource
from pulse_transports.registry import available_sources, load_source, make_source
from pulse_transports.testing import MakeSink, RunSourceContract


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
