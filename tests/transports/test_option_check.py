"""The one option checker shared by transport tables, the hub table and the NATS store."""

from __future__ import annotations

import pytest

from pulse_core.errors import ConfigError
from pulse_transports.config import check_table, is_kind

KINDS = {"interval": float, "queue": int, "path": str, "flag": bool}


class TestIsKind:
    """An int is a float; a bool is only a bool."""

    def test_rules(self) -> None:
        """Ints pass as floats, bools never pass as numbers, strings are strings."""
        assert is_kind(1, float)
        assert is_kind(1.5, float)
        assert not is_kind(True, int)
        assert not is_kind(False, float)
        assert is_kind(True, bool)
        assert not is_kind(1.0, int)
        assert not is_kind("1", float)


class TestCheckTable:
    """Unknown keys and wrong kinds are refused with the table's name; the rest is returned."""

    def test_known_keys_pass(self) -> None:
        """A well-typed table comes back whole."""
        table = {"interval": 1, "queue": 16, "path": "x", "flag": False}
        assert check_table(table, KINDS, what="transport 'socket'") == table

    def test_unknown_key_names_the_valid_ones(self) -> None:
        """An unknown key names the table and lists the valid keys."""
        with pytest.raises(
            ConfigError, match=r"unknown option 'qeue' for transport 'socket'.*queue"
        ):
            check_table({"qeue": 1}, KINDS, what="transport 'socket'")

    def test_wrong_kind(self) -> None:
        """A bool where an int belongs is refused with the expected kind."""
        with pytest.raises(ConfigError, match=r"option 'queue' of \[socket.hub\] must be int"):
            check_table({"queue": True}, KINDS, what="[socket.hub]")

    def test_ignore_unknown_leaves_out_unknown_and_none(self) -> None:
        """With ignore_unknown, foreign keys and None values are simply left out."""
        table = {"other": object(), "queue": None, "interval": 2}
        assert check_table(table, KINDS, what="t", ignore_unknown=True) == {"interval": 2}
