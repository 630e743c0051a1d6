"""The reference fold the fast-fold tests compare with, and the checks they share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from unittest import mock

from pulse_core import _fastfold
from pulse_core._fastfold import LineFolder, fold_lines
from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.reducer import INITIAL_STATE, Folder
from pulse_core.state import RunState


def slow_fold(lines: list[bytes], state: RunState = INITIAL_STATE) -> RunState:
    """The reference: decode every line, apply what decodes, skip the rest."""
    folder = Folder(state)
    for line in lines:
        try:
            folder.apply(decode(line))
        except DecodeError:
            continue
    return folder.state


def check_batches_cut_short(lines: list[bytes], exact: Callable[[RunState], Any]) -> None:
    """A batch folded whenever it holds 3 lines (the cap, made small) ends the same."""
    with mock.patch.object(_fastfold, "_BATCH", 3):
        fast = fold_lines(lines)
    assert exact(fast) == exact(slow_fold(lines))


def check_state_read_mid_batch(
    lines: list[bytes], reads: set[int], exact: Callable[[RunState], Any]
) -> None:
    """Reading the state between lines (a follower's poll) folds the batch first."""
    folder = LineFolder()
    for i, line in enumerate(lines):
        if not folder.fold_line(line):
            with contextlib.suppress(DecodeError):
                folder.apply(decode(line))
        if i in reads:
            assert exact(folder.state) == exact(slow_fold(lines[: i + 1]))
    assert exact(folder.state) == exact(slow_fold(lines))
