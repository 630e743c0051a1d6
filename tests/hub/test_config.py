"""Choosing the socket and in-process transports by name, with checked options."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse_core.errors import ConfigError
from pulse_transports.config import load_config
from pulse_transports.file import FileSink
from pulse_transports.inprocess import InProcessSink
from pulse_transports.registry import available, make_sinks
from pulse_transports.socket import SocketSink
from pulse_transports.wire import Address


class TestEntryPoints:
    """Both transports are registered in the ``pulse.transports`` group."""

    def test_registered(self) -> None:
        names = available()
        assert names["socket"] == "pulse_transports.socket:SocketSink"
        assert names["inprocess"] == "pulse_transports.inprocess:InProcessSink"

    def test_unknown_name_lists_the_choices(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="unknown transport 'sockets'") as info:
            make_sinks(("sockets",), tmp_path, {})
        assert "socket" in str(info.value)
        assert "inprocess" in str(info.value)


class TestSocketOptions:
    """``[tool.pulse.socket]`` options reach the sink; bad ones fail at start-up."""

    def test_defaults(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("PULSE_HUB_SOCKET", raising=False)
        monkeypatch.delenv("PULSE_HUB_TOKEN", raising=False)
        (sink,) = make_sinks(("socket",), tmp_path, {})
        assert isinstance(sink, SocketSink)
        assert sink.address == Address(path=tmp_path / "pulse.sock")
        # Issue 15: no producer-side limit the UI would feel (a tenth of the hub's);
        # issue 14: not an event per call either.
        assert sink.interval == pytest.approx(0.01)
        assert sink.token is None

    def test_options(self, tmp_path: Path) -> None:
        (sink,) = make_sinks(
            ("socket",),
            tmp_path,
            {"socket": {"tcp": "127.0.0.1:7433", "token": "t", "interval": 0.5, "queue": 100}},
        )
        assert isinstance(sink, SocketSink)
        assert sink.address == Address(host="127.0.0.1", port=7433)
        assert (sink.token, sink.interval, sink.queue_limit) == ("t", 0.5, 100)

    def test_path_and_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PULSE_HUB_SOCKET", str(tmp_path / "env.sock"))
        monkeypatch.setenv("PULSE_HUB_TOKEN", "from-env")
        (from_env,) = make_sinks(("socket",), tmp_path, {})
        assert from_env.address == Address(path=tmp_path / "env.sock")  # type: ignore[attr-defined]
        assert from_env.token == "from-env"  # type: ignore[attr-defined]
        (explicit,) = make_sinks(("socket",), tmp_path, {"socket": {"path": "/run/x.sock"}})
        assert explicit.address == Address(path=Path("/run/x.sock"))  # type: ignore[attr-defined]

    def test_unknown_option(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            make_sinks(("socket",), tmp_path, {"socket": {"adress": "x"}})
        message = str(info.value)
        assert "'adress'" in message
        assert "'socket'" in message
        for key in ("path", "tcp", "token", "interval", "queue"):
            assert key in message

    def test_wrong_type(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="'queue' of transport 'socket' must be int"):
            make_sinks(("socket",), tmp_path, {"socket": {"queue": "many"}})

    def test_bad_values(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="'tcp'"):
            make_sinks(("socket",), tmp_path, {"socket": {"tcp": "localhost"}})
        with pytest.raises(ConfigError, match="'queue'"):
            make_sinks(("socket",), tmp_path, {"socket": {"queue": 1}})


class TestInProcessOptions:
    """``[tool.pulse.inprocess]`` takes an interval and nothing else."""

    def test_interval(self, tmp_path: Path) -> None:
        (sink,) = make_sinks(("inprocess",), tmp_path, {"inprocess": {"interval": 0.25}})
        assert isinstance(sink, InProcessSink)
        assert sink.interval == 0.25

    def test_unknown_option(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"unknown option 'bus'.*valid options: interval"):
            make_sinks(("inprocess",), tmp_path, {"inprocess": {"bus": "main"}})


class TestFromConfiguration:
    """``PULSE_TRANSPORTS`` and the ``[tool.pulse]`` table pick the sinks."""

    def test_env_var(self, tmp_path: Path) -> None:
        config = load_config(
            env={"PULSE_TRANSPORTS": "file,socket", "PULSE_HOME": str(tmp_path)}, start=tmp_path
        )
        sinks = make_sinks(config.transports, config.home, config.transport_options)
        assert [type(s) for s in sinks] == [FileSink, SocketSink]

    def test_pyproject_table(self, tmp_path: Path) -> None:
        (tmp_path / "pyproject.toml").write_text(
            '[tool.pulse]\ntransports = ["socket", "inprocess"]\n'
            '[tool.pulse.socket]\npath = "/tmp/hub.sock"\nqueue = 64\n'
            "[tool.pulse.inprocess]\ninterval = 1.0\n"
        )
        config = load_config(env={}, start=tmp_path)
        socket_sink, bus_sink = make_sinks(config.transports, config.home, config.transport_options)
        assert isinstance(socket_sink, SocketSink)
        assert socket_sink.address == Address(path=Path("/tmp/hub.sock"))
        assert socket_sink.queue_limit == 64
        assert isinstance(bus_sink, InProcessSink)
        assert bus_sink.interval == 1.0

    def test_pyproject_bad_option_names_the_key(self, tmp_path: Path) -> None:
        (tmp_path / "pyproject.toml").write_text(
            '[tool.pulse]\ntransports = ["socket"]\n[tool.pulse.socket]\ntimeout = 3\n'
        )
        config = load_config(env={}, start=tmp_path)
        with pytest.raises(ConfigError, match="unknown option 'timeout' for transport 'socket'"):
            make_sinks(config.transports, config.home, config.transport_options)
