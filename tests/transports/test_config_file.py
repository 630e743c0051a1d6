"""Configuration: home and transports by name, with clear errors for unknown names and options."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.errors import ConfigError, IllegalTransition
from pulse_core.testing import RecordingSink
from pulse_transports.config import KEYS, load_config
from pulse_transports.file import FileSink, log_path
from pulse_transports.registry import available, default_sinks, make_sinks, run_defaults
from pulse_transports.v1 import V1SnapshotSink


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PULSE_* variables, and a working directory of our own."""
    for key in KEYS:
        if key.env:
            monkeypatch.delenv(key.env, raising=False)
    work = tmp_path / "project" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return work


class TestHome:
    """home: explicit, then PULSE_HOME, then pulse.toml / [tool.pulse], then ./.pulse."""

    def test_default(self, clean_env: Path) -> None:
        """Nothing configured: ./.pulse with the file and v1 transports."""
        config = load_config()
        assert config.home == Path(".pulse")
        assert config.transports == ("file", "v1")
        assert config.source is None

    def test_pulse_toml_in_a_parent(self, clean_env: Path) -> None:
        """A pulse.toml up the tree is found; its relative home is relative to the file."""
        toml = clean_env.parent / "pulse.toml"
        toml.write_text('[pulse]\nhome = "runs"\n', encoding="utf-8")
        config = load_config()
        assert config.source == toml
        assert config.home == clean_env.parent / "runs"

    def test_tool_pulse_in_pyproject(self, clean_env: Path) -> None:
        """[tool.pulse] in pyproject.toml counts; a pyproject without it is skipped."""
        (clean_env / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
        (clean_env.parent / "pyproject.toml").write_text(
            '[tool.pulse]\nhome = "/abs/home"\ntransports = ["file"]\n', encoding="utf-8"
        )
        config = load_config()
        assert config.home == Path("/abs/home")
        assert config.transports == ("file",)

    def test_env_beats_file_and_argument_beats_env(
        self, clean_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PULSE_HOME overrides the file; an explicit home overrides both."""
        (clean_env / "pulse.toml").write_text('home = "from-file"\n', encoding="utf-8")
        monkeypatch.setenv("PULSE_HOME", "/from/env")
        assert load_config().home == Path("/from/env")
        assert load_config(home="/explicit").home == Path("/explicit")
        assert load_config(env={}).home == clean_env / "from-file"


class TestTransportsByName:
    """Sinks are chosen by name through the pulse.transports entry points."""

    def test_installed(self) -> None:
        """The built-ins are registered like plugins."""
        assert {"file", "v1", "memory"} <= set(available())

    def test_make_sinks_with_options(self, tmp_path: Path) -> None:
        """Names become sink objects with their options."""
        sinks = make_sinks(
            ("file", "v1", "memory"),
            tmp_path,
            {"file": {"max_bytes": 65536, "interval": 2}, "v1": {"interval": 0.5}},
        )
        assert [type(s) for s in sinks] == [FileSink, V1SnapshotSink, RecordingSink]
        assert isinstance(sinks[0], FileSink)
        assert (sinks[0].max_bytes, sinks[0].interval) == (65536, 2)
        assert sinks[1].interval == 0.5

    def test_default_sinks_from_file(self, clean_env: Path) -> None:
        """default_sinks() builds what pulse.toml asks for, options included."""
        (clean_env / "pulse.toml").write_text(
            'transports = ["file"]\nhome = "h"\n[file]\nmax_bytes = 100000\n', encoding="utf-8"
        )
        (sink,) = default_sinks()
        assert isinstance(sink, FileSink)
        assert sink.max_bytes == 100000
        assert sink.home == clean_env / "h"

    def test_unknown_transport(self, tmp_path: Path) -> None:
        """An unknown name fails naming it and the valid choices."""
        with pytest.raises(ConfigError, match=r"unknown transport 'fiel'.*file.*memory.*v1"):
            make_sinks(("fiel",), tmp_path, {})

    def test_unknown_option(self, tmp_path: Path) -> None:
        """An unknown option fails naming the key, the transport and the valid options."""
        with pytest.raises(
            ConfigError, match=r"unknown option 'max_size' for transport 'file'.*fsync.*max_bytes"
        ):
            make_sinks(("file",), tmp_path, {"file": {"max_size": 1}})

    def test_mistyped_option(self, tmp_path: Path) -> None:
        """A wrong type fails naming the key and the expected type."""
        with pytest.raises(
            ConfigError, match=r"option 'max_bytes' of transport 'file' must be int"
        ):
            make_sinks(("file",), tmp_path, {"file": {"max_bytes": "8M"}})
        with pytest.raises(ConfigError, match="must be float"):
            make_sinks(("v1",), tmp_path, {"v1": {"interval": True}})

    def test_bad_option_value(self, tmp_path: Path) -> None:
        """A value the transport rejects fails at start naming the transport and the key."""
        with pytest.raises(ConfigError, match=r"transport 'file'.*max_bytes must be at least"):
            make_sinks(("file",), tmp_path, {"file": {"max_bytes": 10}})

    def test_table_for_unknown_transport(self, tmp_path: Path) -> None:
        """An option table naming no installed transport is an error, not silently ignored."""
        with pytest.raises(ConfigError, match=r"option table 'fiel'.*valid choices: file"):
            make_sinks(("file",), tmp_path, {"fiel": {"max_bytes": 100000}})

    def test_unknown_key(self, clean_env: Path) -> None:
        """An unknown top-level key fails naming it, the file and the valid keys."""
        (clean_env / "pulse.toml").write_text('hoem = "x"\n', encoding="utf-8")
        with pytest.raises(ConfigError, match=r"unknown key 'hoem'.*pulse.toml.*valid keys: "):
            load_config()

    def test_bad_values(self, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Bad values name the key and where they came from."""
        monkeypatch.setenv("PULSE_HEARTBEAT_INTERVAL", "-1")
        with pytest.raises(ConfigError, match=r"'heartbeat_interval' in \$PULSE_HEARTBEAT"):
            load_config()
        monkeypatch.delenv("PULSE_HEARTBEAT_INTERVAL")
        (clean_env / "pulse.toml").write_text("strict = 3\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="'strict'"):
            load_config()
        (clean_env / "pulse.toml").write_text("transports = [1]\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="'transports'"):
            load_config()


class TestTrainingRunUsesConfiguration:
    """TrainingRun() without sinks writes where configuration says, with its settings."""

    def test_default_sinks_and_home(self, clean_env: Path, tmp_path: Path) -> None:
        """PULSE_HOME and PULSE_TRANSPORTS (in the run's env) decide the sinks."""
        home = tmp_path / "home"
        env = {"PULSE_HOME": str(home), "PULSE_TRANSPORTS": "file,v1"}
        with TrainingRun("cfg-1", env=env, background=False) as run:
            run.progress(epoch=1)
        assert log_path(home, "cfg-1").exists()
        assert (home / "training_status.json").exists()

    def test_settings_from_pulse_toml(self, clean_env: Path) -> None:
        """strict, heartbeat_interval, close_timeout in pulse.toml apply when not arguments."""
        (clean_env / "pulse.toml").write_text(
            'transports = ["memory"]\nstrict = true\nheartbeat_interval = 2.5\n'
            "close_timeout = 1.5\n",
            encoding="utf-8",
        )
        assert run_defaults({}) == {"strict": True, "heartbeat_interval": 2.5, "close_timeout": 1.5}
        run = TrainingRun("cfg-2", env={}, background=False)
        try:
            assert run._heartbeat == 2.5
            assert run._close_timeout == 1.5
            with pytest.raises(IllegalTransition):
                run.status("done")  # preparing -> done: illegal, and strict says raise
        finally:
            run.close()

    def test_bad_configuration_fails_at_start(self, clean_env: Path) -> None:
        """An unknown transport in configuration stops TrainingRun() with the message."""
        (clean_env / "pulse.toml").write_text('transports = ["file", "nats2"]\n', encoding="utf-8")
        with pytest.raises(ConfigError, match="unknown transport 'nats2'"):
            TrainingRun("cfg-3", env={}, background=False)
