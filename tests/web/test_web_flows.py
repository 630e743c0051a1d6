"""The Flows History page and its API: flow runs, their TRAIN steps and attempts, a run.

Real flow runs (``web_producer.py flow``: two TRAIN steps through
``FlowTrainer``, the second retried after a CUDA out-of-memory error) are
read back by a real ``pulse serve --http`` process; the page runs in
Debian's Chromium. With ``PULSE_DOC_SHOTS=<folder>`` set, the page test also
writes the docs' screenshots there (``docs/img``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pagekit import Producer, WebHub
from playwright.sync_api import Page, expect
from test_web_api import check
from web_producer import MARKUP

from pulse_transports.flows import FlowTrainer
from pulse_transports.web import openapi
from pulse_transports.web.flowruns import flow_runs


def flow(produce: Callable[..., Producer], frid: str, pause: str = "0.01") -> None:
    """Run one flow run to its end."""
    run = produce("flow", frid, pause)
    assert run.wait(60) == 0, run.log()


def outcomes(step: dict[str, Any]) -> list[str]:
    return [a["outcome"] for a in step["attempts"]]


class TestFlowsApi:
    """/api/flows lists flow runs newest first; /api/flows/{id} gives steps and attempts."""

    def test_flow_runs_steps_and_attempts(
        self, home: Path, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        """Two flow runs come newest first, each step with its attempts, matching the schema."""
        flow(produce, "fr-old")
        flow(produce, "fr-new")
        hub = start_hub()
        document = openapi()
        listing = hub.get_json("/api/flows")
        check(document, "FlowRunList", listing)
        assert [f["flow_run_id"] for f in listing["flow_runs"]] == ["fr-new", "fr-old"]
        newest = listing["flow_runs"][0]
        assert newest["flow_id"] == "nightly-vision"
        assert newest["outcome"] == "success"  # the failed step succeeded when retried
        assert (newest["step_count"], newest["run_count"], newest["error_count"]) == (2, 3, 1)
        assert [(s["flow_step_id"], s["attempt_count"]) for s in newest["steps"]] == [
            ("pretrain", 1),
            ("finetune", 2),
        ]

        one = hub.get_json("/api/flows/fr-new")
        check(document, "FlowRun", one)
        pretrain, finetune = one["steps"]
        assert outcomes(pretrain) == ["success"]
        assert outcomes(finetune) == ["error", "success"]
        assert [a["attempt"] for a in finetune["attempts"]] == [1, 2]
        failed = finetune["attempts"][0]
        assert failed["error"]["error_code"] == "CUDA_OOM"
        assert failed["retryable"] is True
        assert failed["name"] == "fine-tune resnet50"
        assert finetune["attempts"][1]["key_metrics"]["final_loss"] < 0.6
        assert one["duration"] is not None
        assert one["duration"] > 0

        # The same records the Flow Manager reads (FlowTrainer.records), log path aside.
        mine = {a["training_id"]: a for s in one["steps"] for a in s["attempts"]}
        theirs = FlowTrainer(home).records(flow_run_id="fr-new")
        assert set(mine) == {r["training_id"] for r in theirs}
        for record in theirs:
            record.pop("log_path")
            assert {k: mine[record["training_id"]][k] for k in record if k != "duration"} == {
                k: v for k, v in record.items() if k != "duration"
            }

    def test_removed_flow_run_still_listed(
        self, home: Path, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        """A flow run whose logs pulse gc removed is still in /api/flows, from its records."""
        flow(produce, "fr-gone")
        flow(produce, "fr-kept")
        first = start_hub()
        before = first.get_json("/api/flows/fr-gone")
        first.stop()
        gc = [sys.executable, "-m", "pulse_transports.cli", "gc", "--home", str(home)]
        done = subprocess.run(
            [*gc, "--keep-runs", "3", "--yes", "--json"],
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert len(orjson.loads(done.stdout)["removed"]) == 3
        hub = start_hub()
        listing = hub.get_json("/api/flows")
        check(openapi(), "FlowRunList", listing)
        assert [f["flow_run_id"] for f in listing["flow_runs"]] == ["fr-kept", "fr-gone"]
        after = hub.get_json("/api/flows/fr-gone")
        check(openapi(), "FlowRun", after)
        assert after["outcome"] == before["outcome"] == "success"
        assert [outcomes(step) for step in after["steps"]] == [
            outcomes(step) for step in before["steps"]
        ]

    def test_unknown_flow_run(self, start_hub: Callable[..., WebHub]) -> None:
        """An unknown flow run is a 404 in the API's error shape; a bad limit a 400."""
        hub = start_hub()
        status, _, body = hub.request("/api/flows/nope")
        assert status == 404
        check(openapi(), "Error", orjson.loads(body))
        assert hub.get_json("/api/flows")["flow_runs"] == []
        assert hub.request("/api/flows?limit=0")[0] == 400

    def test_flow_run_id_with_a_slash(self) -> None:
        """Grouping keeps odd flow run ids whole, and leaves runs of no flow out."""
        base = {"outcome": "success", "flow_id": "f", "started_at": 1.0, "finished_at": 2.0}
        records = [
            {**base, "flow_run_id": "a/b", "flow_step_id": "train", "attempt": 1},
            {**base, "flow_run_id": None, "flow_step_id": None, "attempt": None},
        ]
        (only,) = flow_runs(records)
        assert only["flow_run_id"] == "a/b"
        assert only["duration"] == 1.0


class TestFavicon:
    """/favicon.ico is a real icon, not a 404 on every load."""

    def test_served(self, start_hub: Callable[..., WebHub]) -> None:
        """The icon is an ICO file, sent with the same security headers."""
        hub = start_hub()
        status, headers, body = hub.request("/favicon.ico")
        assert status == 200
        assert headers["content-type"] == "image/x-icon"
        assert body[:4] == b"\x00\x00\x01\x00"
        assert "content-security-policy" in headers


def shoot(page: Page, folder: Path, name: str) -> None:
    """Screenshot the page into *folder*; also to $PULSE_DOC_SHOTS when set (docs/img)."""
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real picture, not a blank page
    docs = os.environ.get("PULSE_DOC_SHOTS")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(docs) / name)


class TestFlowsPage:
    """Flow runs newest first, then a flow run's steps and attempts, then one run in detail."""

    def test_drill_down(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
        tmp_path: Path,
    ) -> None:
        """From the list to a flow run's steps to the failed attempt's traceback and back."""
        pause = "0.12" if os.environ.get("PULSE_DOC_SHOTS") else "0.01"
        hub = start_hub()
        flow(produce, "fr-2026-12-05", pause)
        flow(produce, "fr-2026-12-06", pause)
        page.goto(hub.url + "#flows")
        expect(page.get_by_test_id("page-flows")).to_have_class("current")
        items = page.get_by_test_id("flow-runs").locator("li.flow-run")
        expect(items.locator(".run-name")).to_have_text(["fr-2026-12-06", "fr-2026-12-05"])
        expect(items.first.locator('[data-role="outcome"]')).to_have_text("success")
        expect(items.first.locator(".flow-steps-mini .badge")).to_have_text(
            ["pretrain", "finetune \u00d72"]
        )
        # The newest flow run is shown: its TRAIN steps, each with its attempts.
        expect(page.get_by_test_id("flow-run-id")).to_have_text("fr-2026-12-06")
        steps = page.get_by_test_id("flow-steps").locator("section.flow-step")
        expect(steps.locator(".step-name")).to_have_text(["pretrain", "finetune"])
        finetune = steps.nth(1)
        expect(finetune.locator(".count")).to_have_text("2 attempts")
        attempts = finetune.locator("tr.attempt")
        expect(attempts.locator(".attempt-no")).to_have_text(["#1", "#2"])
        expect(attempts.locator('[data-role="outcome"]')).to_have_text(["error", "success"])
        expect(attempts.first.locator(".error-code")).to_have_text("CUDA_OOM")
        expect(attempts.nth(1).locator('td[data-metric="final_loss"]')).to_have_text(
            re.compile(r"^0\.\d+$")
        )
        expect(attempts.first.locator("td.num").first).to_have_text(re.compile(r"^\d+\.\ds$"))
        shoot(page, tmp_path, "web-flows-history.png")

        # Another flow run from the list.
        items.nth(1).click()
        expect(page.get_by_test_id("flow-run-id")).to_have_text("fr-2026-12-05")
        assert page.evaluate("location.hash") == "#flows=fr-2026-12-05"
        items.first.click()
        expect(page.get_by_test_id("flow-run-id")).to_have_text("fr-2026-12-06")

        # Drill down: the failed attempt in the run view.
        failed_tid = attempts.first.get_attribute("data-training-id")
        assert failed_tid
        attempts.first.locator("a.run-link").click()
        expect(page.locator("#runs-page")).to_be_visible()
        expect(page.get_by_test_id("detail-id")).to_have_text(failed_tid)
        expect(page.get_by_test_id("detail-status")).to_have_text("error")
        expect(page.get_by_test_id("detail-timeline").locator(".badge")).to_have_text(
            ["preparing", "preparing", "running", "error"]
        )
        expect(page.get_by_test_id("loss-chart").locator("svg polyline")).to_have_count(1)
        curves = page.get_by_test_id("metric-curves").locator("figure")
        expect(curves.locator("figcaption")).to_have_text(["samples_per_second"])
        error = page.get_by_test_id("detail-errors").locator("li.error")
        expect(error.locator(".error-code")).to_have_text("CUDA_OOM")
        details = error.locator('dl[data-role="details"]')
        expect(details.locator("dt")).to_have_text(["exception_type", "trace_id", "traceback"])
        trace = details.locator('dd[data-key="traceback"] pre')
        expect(trace).to_be_visible()
        text = trace.inner_text()
        # Pre-formatted: real line breaks, no escaped "\n", no JSON quotes.
        assert text.startswith("Traceback (most recent call last):\n")
        assert "\\n" not in text
        assert not text.startswith('"')
        last = text.rstrip().splitlines()[-1]
        assert last == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        shoot(page, tmp_path, "web-flow-run-drilldown.png")

        # Back to its flow run.
        page.get_by_test_id("detail-flow-history").click()
        expect(page.get_by_test_id("flow-run-id")).to_have_text("fr-2026-12-06")
        expect(page.locator("#runs-page")).to_be_hidden()

    def test_no_flow_runs(self, page: Page, start_hub: Callable[..., WebHub]) -> None:
        """A home without flow runs says so in words."""
        hub = start_hub()
        page.goto(hub.url + "#flows")
        expect(page.locator("#flow-runs-empty")).to_be_visible()
        expect(page.locator("#flow-detail-empty")).to_have_text("No flow run selected.")

    def test_markup_is_text(
        self,
        page: Page,
        start_hub: Callable[..., WebHub],
        produce: Callable[..., Producer],
    ) -> None:
        """Flow ids, step ids, names and error messages with markup render as text."""
        hub = start_hub()
        produce("escape", "xss-flow")
        deadline = time.monotonic() + 15
        while not hub.get_json("/api/flows")["flow_runs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        page.goto(hub.url + "#flows")
        item = page.get_by_test_id("flow-runs").locator("li.flow-run")
        expect(item.locator(".run-name")).to_have_text("<b>flow-run</b>")
        expect(item.locator(".flow-name")).to_have_text(MARKUP)
        # The id holds a slash: it reaches the API URL-encoded, and whole.
        expect(page.get_by_test_id("flow-run-id")).to_have_text("<b>flow-run</b>")
        expect(page.get_by_test_id("flow-id")).to_have_text(MARKUP)
        step = page.get_by_test_id("flow-steps").locator("section.flow-step")
        expect(step.locator(".step-name")).to_have_text(MARKUP)
        expect(step.locator("a.run-link span").first).to_have_text(MARKUP)
        injected = page.locator("main script, main img, main b, main i")
        expect(injected).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"


def rec(step: str, attempt: int, outcome: str, start: float, end: float | None) -> dict[str, Any]:
    return {
        "flow_id": "f",
        "flow_run_id": "fr",
        "flow_step_id": step,
        "attempt": attempt,
        "outcome": outcome,
        "started_at": start,
        "finished_at": end,
        "duration": None if end is None else end - start,
        "error": {"error_code": "X"} if outcome == "error" else None,
    }


class TestGrouping:
    """A flow run's outcome, order and times follow each step's last attempt."""

    def test_retried_step_counts_its_last_attempt(self) -> None:
        """An error then a success is a success; attempts keep their order; errors counted."""
        (run,) = flow_runs(
            [
                rec("b", 2, "success", 30.0, 40.0),
                rec("a", 1, "success", 0.0, 10.0),
                rec("b", 1, "error", 15.0, 20.0),
            ]
        )
        assert run["outcome"] == "success"
        assert [s["flow_step_id"] for s in run["steps"]] == ["a", "b"]
        assert outcomes(run["steps"][1]) == ["error", "success"]
        assert (run["started_at"], run["finished_at"], run["duration"]) == (0.0, 40.0, 40.0)
        assert run["error_count"] == 1

    def test_running_and_failed(self) -> None:
        """A step still running makes the flow run running, with no end; else errors show."""
        (running,) = flow_runs([rec("a", 1, "error", 0.0, 5.0), rec("b", 1, "running", 6.0, None)])
        assert running["outcome"] == "running"
        assert running["finished_at"] is None
        assert running["duration"] is None
        (failed,) = flow_runs([rec("a", 1, "success", 0.0, 5.0), rec("b", 1, "error", 6.0, 9.0)])
        assert failed["outcome"] == "error"
        (lost,) = flow_runs([rec("a", 1, "lost", 0.0, None), rec("b", 1, "error", 6.0, 9.0)])
        assert lost["outcome"] == "lost"

    def test_newest_first(self) -> None:
        """Flow runs are listed by their first start, newest first."""
        old = rec("a", 1, "success", 0.0, 1.0)
        new = {**rec("a", 1, "success", 5.0, 6.0), "flow_run_id": "fr-new"}
        assert [r["flow_run_id"] for r in flow_runs([old, new])] == ["fr-new", "fr"]
