"""Fixtures of the live tests: a fresh folder whose default home is ``.pulse``.

Hubs and producers started through the fixtures are stopped at the end,
whatever happened. The helpers live in ``livekit.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from livekit import LiveHub, Proc, Subscriber, producer

from pulse_transports.wire import Address


@pytest.fixture
def folder() -> Iterator[Path]:
    """A fresh working folder (short, so ``.pulse/pulse.sock`` fits a Unix socket path)."""
    root = Path(tempfile.mkdtemp(prefix="pl-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes to stop at the end."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def start_hub(folder: Path, procs: list[Proc]) -> Callable[..., LiveHub]:
    """Start ``pulse serve`` (with extra arguments) in the folder and wait for it."""

    def start(*args: str) -> LiveHub:
        hub = LiveHub(folder, *args)
        procs.append(hub)
        return hub.wait_ready()

    return start


@pytest.fixture
def produce(folder: Path, procs: list[Proc]) -> Callable[..., Proc]:
    """Start a ``live_producer.py`` scenario in the folder."""

    def start(scenario: str, tid: str, *args: str, **env: str) -> Proc:
        proc = producer(folder, scenario, tid, *args, **env)
        procs.append(proc)
        return proc

    return start


@pytest.fixture
def subscribe() -> Iterator[Callable[..., Subscriber]]:
    """Open hub subscribers; all are closed at the end."""
    opened: list[Subscriber] = []

    def open_sub(address: Address, **hello: object) -> Subscriber:
        sub = Subscriber(address, **hello)
        opened.append(sub)
        return sub

    yield open_sub
    for sub in opened:
        sub.close()
