"""The web page is live for runs that use the defaults (issue 15), in a real browser.

Headless Chromium (Debian's, via Playwright) loads the page of a real
``pulse serve --http`` started on a fresh home; the README's ``pulse demo``
and the README loop run with no environment variable at all.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import LiveHub, Proc, wait_file, zero_env
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    pw: Playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def card(page: Page, tid: str) -> Any:
    return page.locator(f'li.run[data-training-id="{tid}"]')


class TestPageLiveByDefault:
    """Runs with the default configuration are live in the page, and a dead one is not active."""

    def test_demo_and_readme_loop_are_live_in_the_page(
        self,
        page: Page,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
        procs: list[Proc],
    ) -> None:
        """Both runs appear under Active runs, move without a reload, then end under finished."""
        hub = start_hub("--http", f"127.0.0.1:{free_port()}")
        page.goto(hub.url)
        expect(page.get_by_test_id("connection")).to_have_text("live")
        demo = Proc(
            [sys.executable, "-m", "pulse_transports.cli", "demo", "--training-id", "demo-1"],
            folder,
            zero_env(),
            "demo",
        )
        procs.append(demo)
        loop = produce("readme", "loop-1", "0.01")
        active = page.get_by_test_id("active-runs")
        expect(active.locator('li.run[data-training-id="demo-1"]')).to_have_count(1)
        expect(active.locator('li.run[data-training-id="loop-1"]')).to_have_count(1)
        position = card(page, "loop-1").locator('[data-role="position"]')
        expect(position).not_to_have_text("")
        first = position.text_content()
        expect(position).not_to_have_text(first or "")  # it moves without a reload
        assert demo.wait() == 0, demo.log()
        assert loop.wait() == 0, loop.log()
        finished = page.get_by_test_id("finished-runs")
        for tid in ("demo-1", "loop-1"):
            expect(finished.locator(f'li.run[data-training-id="{tid}"]')).to_have_count(1)
            expect(card(page, tid).locator('[data-role="status"]')).to_have_text("done")
        expect(active.locator("li.run")).to_have_count(0)

    def test_a_killed_run_is_lost_not_active(
        self,
        page: Page,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
    ) -> None:
        """SIGKILL: the run leaves Active runs and shows "lost — last seen running", not running."""
        hub = start_hub("--http", f"127.0.0.1:{free_port()}")
        page.goto(hub.url)
        run = produce("forever", "dead-1", str(folder / "started"))
        wait_file(folder / "started")
        active = page.get_by_test_id("active-runs")
        expect(active.locator('li.run[data-training-id="dead-1"]')).to_have_count(1)
        time.sleep(0.3)
        run.kill(signal.SIGKILL)
        status = card(page, "dead-1").locator('[data-role="status"]')
        expect(status).to_have_text("lost — last seen running", timeout=5_000)
        expect(active.locator('li.run[data-training-id="dead-1"]')).to_have_count(0)
        expect(page.get_by_test_id("finished-runs").locator("li.run")).to_have_count(1)
