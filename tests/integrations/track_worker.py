"""A training script that reports with track() and ends the way it is told to.

Started by test_integrations_track.py as a real subprocess with PULSE_HOME
set; the first argument names the scenario (see :data:`SCENARIOS`). A body
that waits for a signal prints ``ready`` first. Not a test module.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from pulse_transports.integrations import track

EPOCHS = 3
STEPS = 4


def batches(fail_at: int | None = None) -> Iterator[int]:
    """A data loader without a length; raises FileNotFoundError at *fail_at*."""
    for index in range(STEPS):
        if index == fail_at:
            raise FileNotFoundError(f"shard-{index}.bin")
        yield index


def fail(kind: str) -> None:
    """Raise the failure named *kind*."""
    if kind == "fnf":
        raise FileNotFoundError("/data/train.bin")
    if kind == "oom":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "value":
        raise ValueError("bad batch")
    if kind == "sigint":
        print("ready", flush=True)
        time.sleep(60)  # interrupted by the test's SIGINT
    raise AssertionError(kind)


def single(kind: str) -> None:
    """One loop whose body fails in its third iteration."""
    for index in track(range(STEPS)):
        if index == 2:
            fail(kind)


def nested(kind: str) -> None:
    """The documented nested pattern; the body fails in epoch 2, step 3."""
    for epoch in track(range(EPOCHS)):
        for step in track(range(STEPS)):
            if epoch == 1 and step == 2:
                fail(kind)


def nested_loader() -> None:
    """The nested pattern whose inner loader raises FileNotFoundError in epoch 2."""
    for epoch in track(range(EPOCHS)):
        for _ in track(batches(fail_at=2 if epoch == 1 else None)):
            pass


def single_loader() -> None:
    """One loop over a loader that raises FileNotFoundError."""
    for _ in track(batches(fail_at=2)):
        pass


def caught_outside() -> None:
    """A body exception the script catches outside the loops, then exits normally."""
    with contextlib.suppress(ValueError):
        nested("value")


def nested_break() -> None:
    """The nested pattern left with break from both loops in epoch 2."""
    for epoch in track(range(EPOCHS)):
        for step in track(range(STEPS)):
            if step == 2:
                break
        if epoch == 1:
            break


def nested_return() -> None:
    """The nested pattern left with return from the inner loop."""
    for epoch in track(range(EPOCHS)):
        for step in enumerate(track(range(STEPS))):
            if epoch == 1 and step[0] == 2:
                return


def wrapped_break() -> None:
    """A generator around track() whose caller breaks out of its loop."""

    def epochs() -> Iterator[int]:
        yield from track(range(EPOCHS))

    for epoch in epochs():
        if epoch == 1:
            break


def kept_generator() -> None:
    """A generator around track() kept in a variable, left with break, then dropped."""

    def epochs() -> Iterator[int]:
        yield from track(range(EPOCHS))

    loop = epochs()
    for epoch in loop:
        if epoch == 1:
            break
    loop = iter(())  # the generator is dropped here, not at the break
    print("after the loop", flush=True)


def nested_unsized() -> None:
    """The nested pattern over an outer range and an inner loader without a length."""
    for _ in track(range(2)):
        for _ in track(batches()):
            pass


def zip_truncated() -> None:
    """Loops over zip(track(...), range(n)) that end when the range does."""
    for _ in track(range(EPOCHS)):
        for _ in zip(track(batches()), range(2), strict=False):
            pass


def zip_partner_raises() -> None:
    """A loop over zip(track(...), a loader) whose loader raises FileNotFoundError."""
    for _ in track(range(EPOCHS)):
        for _ in zip(track(range(STEPS)), batches(fail_at=2), strict=False):
            pass


SCENARIOS: dict[str, Callable[[], None]] = {
    "nested-loader": nested_loader,
    "single-loader": single_loader,
    "caught-outside": caught_outside,
    "nested-break": nested_break,
    "nested-return": nested_return,
    "wrapped-break": wrapped_break,
    "nested-unsized": nested_unsized,
    "kept-generator": kept_generator,
    "zip-truncated": zip_truncated,
    "zip-partner-raises": zip_partner_raises,
    **{f"single-{k}": (lambda k=k: single(k)) for k in ("fnf", "oom", "interrupt", "value")},
    **{f"nested-{k}": (lambda k=k: nested(k)) for k in ("fnf", "oom", "interrupt", "sigint")},
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
