"""The run view's first-hour fixes in a real browser: cards, times, unnamed runs, the icon.

Headless Chromium (Debian's) loads the page from a real ``pulse serve --http``
process while real producer processes report through the socket sink.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pagekit import Producer, WebHub
from playwright.sync_api import Page, Response, expect

SAME_NAME = "pulse demo (numpy MLP)"


def card(page: Page, tid: str) -> Any:
    return page.locator(f'li.run[data-training-id="{tid}"]')


def role(node: Any, name: str) -> Any:
    return node.locator(f'[data-role="{name}"]')


def finish(run: Producer) -> None:
    for gate in (1, 2, 3):
        run.open_gate(gate)
    assert run.wait() == 0, run.log()


class TestCards:
    """Runs of the same name are told apart by short id, start time, duration and flow."""

    def test_same_name_cards_differ(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        """Two cards with one name show different short ids, a start time and a duration."""
        hub = start_hub()
        first = "20261206-170013-510-359eac9183"
        second = "20261206-170020-001-7fcf03b5c4"
        finish(produce("lifecycle", first, SAME_NAME))
        finish(produce("lifecycle", second, SAME_NAME))
        flowed = produce("error", "flowed-1", SAME_NAME)
        flowed.open_gate(1)
        assert flowed.wait() == 0
        page.goto(hub.url)
        one, two, three = card(page, first), card(page, second), card(page, "flowed-1")
        for c in (one, two, three):
            expect(c.locator(".run-name")).to_have_text(SAME_NAME)
        expect(role(one, "short-id")).to_have_text("359eac")
        expect(role(two, "short-id")).to_have_text("7fcf03")
        expect(role(three, "short-id")).to_have_text("flowed-1")
        clock = re.compile(r"^\d{2}:\d{2}:\d{2}$")
        expect(role(one, "started")).to_have_text(clock)
        expect(role(one, "duration")).to_have_text(re.compile(r"^\d+\.\ds$"))
        expect(role(one, "flow")).to_be_hidden()
        expect(role(three, "flow")).to_have_text("flow-7/train")

    def test_unnamed_run_shows_its_id_once(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        """A run without a name shows its id as the title, not a second time beside it."""
        hub = start_hub()
        finish(produce("lifecycle", "nameless-1", "-"))
        page.goto(hub.url)
        expect(page.locator("#d-name")).to_have_text("nameless-1")
        expect(page.get_by_test_id("detail-id")).to_be_hidden()
        expect(card(page, "nameless-1").locator(".run-name")).to_have_text("nameless-1")
        expect(role(card(page, "nameless-1"), "short-id")).to_be_hidden()
        assert page.locator("#detail-body").inner_text().count("nameless-1") == 1


class TestTimes:
    """A live run shows how long it has run and an ETA; an ended one how long it took."""

    def test_elapsed_and_eta(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        """Elapsed time moves on its own, the ETA follows the progress rate, then 'took'."""
        hub = start_hub()
        page.goto(hub.url)
        run = produce("until", "eta-1")
        expect(page.get_by_test_id("detail-status")).to_have_text("running")
        expect(page.get_by_test_id("detail-elapsed")).to_have_text(re.compile(r"elapsed \d"))
        expect(page.get_by_test_id("detail-eta")).to_have_text(re.compile(r"^· ETA \d"))
        expect(page.get_by_test_id("detail-started")).to_have_text(re.compile(r"^started \d"))
        # The ETA is the terminal's: elapsed * (1 - f) / f.
        eta, spent, f = page.evaluate(
            """() => { const r = window.pulse.runs.get('eta-1');
                       const f = window.pulse.fraction(r);
                       const start = r.started_at ?? r.created_at;
                       return [window.pulse.eta(r), Date.now() / 1000 - start, f]; }"""
        )
        assert 0 < f < 1
        assert abs(eta - spent * (1 - f) / f) <= 2 * (1 - f) / f  # within 2 s of elapsed
        page.wait_for_function(
            "() => /elapsed ([3-9]|\\d\\d)/.test(document.getElementById('d-elapsed').textContent)"
        )
        run.open_gate(1)
        assert run.wait() == 0
        expect(page.get_by_test_id("detail-status")).to_have_text("done")
        expect(page.get_by_test_id("detail-elapsed")).to_have_text(re.compile(r"^· took \d"))
        expect(page.get_by_test_id("detail-eta")).to_have_text("")


class TestIcon:
    """Loading the page asks for nothing that is not there: no 404, the favicon included."""

    def test_no_404_on_load(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        """Every response of a page load succeeds, and the page names its icon."""
        hub = start_hub()
        finish(produce("lifecycle", "icon-1"))
        failed: list[str] = []

        def note(response: Response) -> None:
            if response.status >= 400:
                failed.append(f"{response.status} {response.url}")

        page.on("response", note)
        page.goto(hub.url)
        expect(page.get_by_test_id("detail-status")).to_have_text("done")
        assert page.locator('link[rel="icon"]').get_attribute("href") == "/favicon.ico"
        icon = page.request.get(hub.base + "favicon.ico")
        assert icon.status == 200
        assert icon.headers["content-type"] == "image/x-icon"
        assert failed == []
