"""The page in a real browser: live runs, errors, liveness, escaping, hub restarts.

Headless Chromium (Debian's) loads the page from a real ``pulse serve --http``
process while real producer processes report through the socket sink.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from pagekit import Producer, WebHub
from playwright.sync_api import Page, expect
from web_producer import MARKUP


def card(page: Page, tid: str) -> Any:
    return page.locator(f'li.run[data-training-id="{tid}"]')


def detail(page: Page, role: str) -> Any:
    return page.get_by_test_id(f"detail-{role}")


class TestLifecycle:
    """A run going from preparing to done shows each state, its progress and a final 100 %."""

    def test_each_state_then_done(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub()
        page.goto(hub.url)
        expect(page.get_by_test_id("connection")).to_have_text("live")
        run = produce("lifecycle", "life-1")
        expect(detail(page, "id")).to_have_text("life-1")
        expect(detail(page, "status")).to_have_text("preparing")
        expect(detail(page, "message")).to_have_text("loading data")
        expect(detail(page, "percent")).to_have_text("0%")  # totals known, no step yet
        # Nothing measured yet: said in words, no empty table or chart.
        expect(page.locator("#d-metrics-empty")).to_have_text("No metrics reported yet.")
        expect(page.get_by_test_id("detail-metrics")).to_be_hidden()
        expect(page.get_by_test_id("loss-chart-empty")).to_have_text("No loss reported yet.")
        expect(page.get_by_test_id("loss-chart")).to_be_hidden()
        expect(card(page, "life-1").locator('[data-role="status"]')).to_have_text("preparing")

        run.open_gate(1)
        expect(detail(page, "status")).to_have_text("running")
        # epoch 1, step 5 of 10, 2 epochs: (1 - 1 + 5/10) / 2 = 25 %
        expect(detail(page, "percent")).to_have_text("25%")
        expect(detail(page, "position")).to_have_text("epoch 1/2 · step 5/10")
        expect(card(page, "life-1").locator('[data-role="percent"]')).to_have_text("25%")
        expect(page.locator('#d-metrics td[data-metric="loss"]')).to_have_text("0.2")
        expect(detail(page, "liveness")).to_have_text("alive")

        run.open_gate(2)
        expect(detail(page, "status")).to_have_text("cooling_down")
        expect(detail(page, "message")).to_have_text("saving the checkpoint")
        expect(detail(page, "percent")).to_have_text("100%")  # epoch 2, step 10 of 10

        run.open_gate(3)
        assert run.wait() == 0
        expect(detail(page, "status")).to_have_text("done")
        expect(detail(page, "percent")).to_have_text("100%")
        expect(detail(page, "liveness")).to_have_text("ended")
        finished = page.get_by_test_id("finished-runs")
        expect(finished.locator('li.run[data-training-id="life-1"]')).to_have_count(1)
        expect(page.get_by_test_id("active-runs").locator("li")).to_have_count(0)
        timeline = detail(page, "timeline").locator(".badge")
        expect(timeline).to_have_text(["preparing", "preparing", "running", "cooling_down", "done"])
        expect(page.get_by_test_id("loss-chart").locator("svg polyline")).to_have_count(1)

    def test_a_finished_run_is_offered_and_switched_to(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub()
        done = produce("lifecycle", "old-1")
        for gate in (1, 2, 3):
            done.open_gate(gate)
        assert done.wait() == 0
        live = produce("forever", "live-1")
        page.goto(hub.url)
        expect(detail(page, "id")).to_have_text("live-1")  # an active run is chosen first
        card(page, "old-1").click()
        expect(detail(page, "id")).to_have_text("old-1")
        expect(detail(page, "status")).to_have_text("done")
        expect(page.get_by_test_id("loss-chart").locator("svg polyline")).to_have_count(1)
        assert page.evaluate("location.hash") == "#run=old-1"
        live.kill()


class TestErrors:
    """An error run shows its code, message, retryable flag, expandable details and flow link."""

    def test_error_run(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub()
        page.goto(hub.url)
        produce("error", "err-1").open_gate(1)
        expect(detail(page, "status")).to_have_text("error")
        errors = detail(page, "errors").locator("li.error")
        expect(errors).to_have_count(1)
        expect(errors.locator(".error-code")).to_have_text("DATASET_NOT_FOUND")
        expect(errors.locator(".error-message")).to_have_text("no dataset at /data/train.csv")
        expect(errors.locator(".badge")).to_have_text("retryable")
        # Details are a readable key/value list, not a JSON string.
        details = errors.locator('dl[data-role="details"]')
        expect(details.locator("dt")).to_have_text(["path", "hint"])
        expect(details.locator('dd[data-key="hint"]')).to_have_text("mount the data volume")
        expect(details.locator('dd[data-key="path"]')).to_have_text("/data/train.csv")
        flow = detail(page, "flow")
        expect(flow.locator("#d-flow-link")).to_have_text("flow-7 / fr-42")
        expect(flow.get_by_test_id("detail-flow-history")).to_have_attribute("href", "#flows=fr-42")
        expect(flow.locator("code")).to_have_text("train")
        # No chart pretends to be data: one loss value is said as a value.
        expect(page.get_by_test_id("loss-chart-empty")).to_contain_text("One loss value so far")
        expect(page.get_by_test_id("loss-chart")).to_be_hidden()
        assert "NaN" not in page.locator("body").inner_text()


class TestLiveness:
    """A silent producer is shown stale, and a SIGKILLed one lost, never running forever."""

    def test_stale_then_lost(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub(env={"PULSE_STALE_AFTER": "1", "PULSE_LOST_AFTER": "60"})
        page.goto(hub.url)
        run = produce("forever", "gone-1")
        expect(detail(page, "status")).to_have_text("running")
        expect(detail(page, "liveness")).to_have_text("alive")
        run.signal(signal.SIGSTOP)  # silent, but its lock is still held
        expect(detail(page, "liveness")).to_have_text("stale")
        expect(detail(page, "message")).to_contain_text("no news since")
        run.kill()  # the lock is released: the writer is gone
        expect(detail(page, "liveness")).to_have_text("lost")
        expect(card(page, "gone-1").locator('[data-role="liveness"]')).to_have_text("lost")
        expect(detail(page, "message")).to_contain_text("training process lost")
        expect(detail(page, "status")).to_have_text("lost — last seen running")  # issue 15

    def test_lost_after_a_reload(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub(env={"PULSE_STALE_AFTER": "1"})
        run = produce("forever", "gone-2")
        deadline = time.monotonic() + 15
        while hub.get_json("/api/runs")["runs"] == [] and time.monotonic() < deadline:
            time.sleep(0.05)
        run.kill()
        page.goto(hub.url)
        expect(detail(page, "liveness")).to_have_text("lost")


class TestEscaping:
    """Names, messages, error details, flow ids and metric names render as text, never HTML."""

    def test_markup_is_text(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub()
        page.goto(hub.url)
        produce("escape", "xss-1")
        expect(detail(page, "errors").locator("li.error")).to_have_count(1)
        expect(page.locator("#d-name")).to_have_text(MARKUP)
        expect(detail(page, "message")).to_have_text(MARKUP)
        expect(detail(page, "errors").locator(".error-message")).to_have_text(MARKUP)
        expect(page.locator('#d-errors dd[data-key="html"]')).to_have_text(MARKUP)
        expect(page.locator('#d-errors dd[data-key="trace"]')).to_have_text("<pre>x</pre>")
        expect(page.locator('#d-metrics td[data-metric="<i>metric</i>"]')).to_have_text("1.5")
        expect(detail(page, "flow").locator("#d-flow-link")).to_have_text(
            f"{MARKUP} / <b>flow-run</b>"
        )
        expect(card(page, "xss-1").locator(".run-name")).to_have_text(MARKUP)
        # No progress fields at all: "unknown", not a made-up 0 %.
        expect(detail(page, "percent")).to_have_text("progress unknown")
        expect(page.locator("#d-bar")).to_have_class("bar unknown")
        injected = page.locator("main script, main img, main b, main i, main pre pre")
        expect(injected).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"
        href = detail(page, "flow").locator("#d-flow-link").get_attribute("href")
        assert href == "#flow=%3Cb%3Eflow-run%3C%2Fb%3E"


class TestReconnect:
    """After a hub restart the page reconnects by itself and resumes without loss or repeats."""

    def test_hub_restart(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        first = start_hub()
        page.goto(first.url)
        run = produce("until", "restart-1")
        expect(detail(page, "status")).to_have_text("running")
        page.wait_for_function("() => window.pulse.runs.get('restart-1').last_seq > 10")
        first.stop(signal.SIGKILL)  # a crash: connections are cut, nothing is said
        expect(page.get_by_test_id("connection")).to_have_text("reconnecting…")
        seq_before = page.evaluate("window.pulse.runs.get('restart-1').last_seq")
        second = start_hub(http=first.http)
        expect(page.get_by_test_id("connection")).to_have_text("live")
        page.wait_for_function(
            f"() => window.pulse.runs.get('restart-1').last_seq > {seq_before + 5}"
        )
        run.open_gate(1)
        assert run.wait() == 0
        expect(detail(page, "status")).to_have_text("done")
        expect(detail(page, "percent")).to_have_text("100%")
        stats = page.evaluate("({...window.pulse.stats})")
        assert stats["duplicates"] == 0
        # Nothing lost: the page's timeline is the hub's, entry for entry.
        view = second.view("restart-1")
        mine = page.evaluate(
            "window.pulse.runs.get('restart-1').timeline.map(t => [t.seq, t.status, t.message])"
        )
        assert mine == [[t["seq"], t["status"], t["message"]] for t in view["timeline"]]
        assert mine[-2][2] == "finishing after the restart"
        last_seq = page.evaluate("window.pulse.runs.get('restart-1').last_seq")
        assert last_seq == view["stats"]["last_seq"]


class TestToken:
    """Opened once with ``?token=``, the page keeps working on its cookie."""

    def test_page_with_a_token(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub(http="0.0.0.0:0", args=("--allow-remote", "--token", "s3cret"))
        base = f"http://127.0.0.1:{hub.port}/"
        assert page.goto(base) is not None
        expect(page.locator("body")).to_contain_text("unauthorized")
        page.goto(base + "?token=s3cret")
        assert page.url == base  # the token left the address bar
        expect(page.get_by_test_id("connection")).to_have_text("live")
        produce("error", "tok-1").open_gate(1)
        expect(detail(page, "status")).to_have_text("error")


class TestAddressHash:
    """A malformed address hash is ignored: the page still loads and shows the runs."""

    def test_malformed_hash(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub()
        run = produce("error", "hash-1")
        run.open_gate(1)
        assert run.wait() == 0
        for bad in ("#run=%", "#run=%E0%A4%A", "#flow=%zz", "#run="):
            page.goto(hub.url + bad)
            expect(card(page, "hash-1")).to_have_count(1)
            expect(page.get_by_test_id("connection")).to_have_text("live")
        page.goto(hub.url + "#flows=%")
        expect(page.locator("#flows-page")).to_be_visible()


class TestBidi:
    """Bidi controls in a run's text are shown as visible marks, never applied."""

    def test_right_to_left_override_is_shown_not_applied(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        hub = start_hub()
        page.goto(hub.url)
        name = "invoice\u202egnp.exe\u2066x\u2069"
        produce("lifecycle", "bidi-1", name).open_gate(1)
        shown = "invoice<U+202E>gnp.exe<U+2066>x<U+2069>"
        expect(card(page, "bidi-1").locator(".run-name")).to_have_text(shown)
        expect(page.locator("#d-name")).to_have_text(shown)
        text = page.locator("#runs-page").inner_text()
        assert not any(c in text for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class TestNewToken:
    """A page whose cookie no longer carries the hub's token says what to do."""

    def test_rotated_token(self, page: Page, start_hub: Callable[..., WebHub]) -> None:
        first = start_hub()
        page.goto(first.url)
        expect(page.get_by_test_id("connection")).to_have_text("live")
        old = first.token
        first.stop()
        (first.home / "hub.token").unlink()  # rotate: the next start makes a new token
        second = start_hub(http=first.http)
        assert second.token != old
        expect(page.get_by_test_id("connection")).to_contain_text("token")
        page.goto(second.url)  # the new URL the hub printed
        expect(page.get_by_test_id("connection")).to_have_text("live")
