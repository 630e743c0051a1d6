"""Fixtures of the web tests: Chromium (Debian's, via Playwright), hubs, producers.

One headless Chromium serves each test module -- not the session: while
Playwright's sync API runs it holds an event loop in the main thread, and
tests elsewhere call ``asyncio.run`` -- and each test gets its own browser
context and page, its own ``pulse serve --http`` processes and
producer processes, all stopped at the end. The helpers live in
``pagekit.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pagekit import CHROMIUM, CHROMIUM_ARGS, Producer, WebHub
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; errors thrown by the page's scripts fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def home() -> Iterator[Path]:
    """A PULSE home whose ``pulse.sock`` path fits the Unix socket limit."""
    root = Path(tempfile.mkdtemp(prefix="pw-"))
    try:
        yield root / "home"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def start_hub(home: Path) -> Iterator[Callable[..., WebHub]]:
    """Start ``pulse serve --http`` (arguments as :class:`WebHub`); all stopped at the end."""
    hubs: list[WebHub] = []

    def start(**kwargs: object) -> WebHub:
        hub = WebHub(home, **kwargs)  # type: ignore[arg-type]
        hubs.append(hub)
        return hub.wait_ready()

    yield start
    for hub in hubs:
        hub.stop()


@pytest.fixture
def produce(home: Path) -> Iterator[Callable[..., Producer]]:
    """Start producer processes ``produce(scenario, tid, *args)``; all killed at the end."""
    started: list[Producer] = []

    def start(scenario: str, tid: str, *args: str) -> Producer:
        producer = Producer(scenario, tid, home, home.parent / "control" / tid, *args)
        started.append(producer)
        return producer

    yield start
    for producer in started:
        producer.kill()
