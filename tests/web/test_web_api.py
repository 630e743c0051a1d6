"""The JSON API: its OpenAPI description is valid and every answer matches it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs
from openapi_spec_validator import validate
from pagekit import Producer, WebHub

from pulse_transports.web import openapi


def check(document: dict[str, Any], schema_name: str, instance: Any) -> None:
    """Validate *instance* against a component schema of the description."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", **document}
    Draft202012Validator(schema).validate(instance)


def finished_run(produce: Callable[..., Producer], tid: str, scenario: str = "error") -> None:
    run = produce(scenario, tid)
    for gate in (1, 2, 3):
        run.open_gate(gate)
    assert run.wait() == 0


class TestDescription:
    """/openapi.json is a valid OpenAPI 3.1 document naming every route."""

    def test_valid(self) -> None:
        document = openapi()
        validate(document)
        assert document["openapi"] == "3.1.0"
        assert set(document["paths"]) == {
            "/api/runs",
            "/api/runs/{training_id}",
            "/api/runs/{training_id}/history",
            "/api/runs/{training_id}/v1",
            "/api/runs/{training_id}/metrics",
            "/api/flows",
            "/api/flows/{flow_run_id}",
            "/events",
        }

    def test_served(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub()
        assert hub.get_json("/openapi.json") == openapi()


class TestRuns:
    """Each endpoint answers what its schema says, for live and finished runs."""

    def test_finished_run(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        hub = start_hub()
        finished_run(produce, "api-1")
        document = openapi()
        runs = hub.get_json("/api/runs")
        check(document, "RunList", runs)
        (row,) = runs["runs"]
        assert row["training_id"] == "api-1"
        assert row["status"] == "error"
        assert row["error"]["error_code"] == "DATASET_NOT_FOUND"
        assert "log" not in row  # no server paths for browsers

        view = hub.get_json("/api/runs/api-1")
        check(document, "View", view)
        assert view["last_error"]["details"] == {
            "path": "/data/train.csv",
            "hint": "mount the data volume",
        }
        assert view["flow"]["flow_run_id"] == "fr-42"

        record = hub.get_json("/api/runs/api-1/history")
        check(document, "HistoryRecord", record)
        assert record["outcome"] == "error"
        assert record["retryable"] is True

        v1 = hub.get_json("/api/runs/api-1/v1")
        check(document, "V1Snapshot", v1)
        assert v1["status"] == "error"
        assert v1["loss"] == 0.5

        metrics = hub.get_json("/api/runs/api-1/metrics")
        check(document, "MetricHistory", metrics)
        assert metrics["metrics"]["loss"]["windows"][0]["last"] == 0.5
        assert hub.get_json("/api/runs/api-1/metrics?names=nothing")["metrics"] == {}

    def test_after_a_restart_from_the_log(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        first = start_hub()
        finished_run(produce, "api-2", "lifecycle")
        first.stop()
        second = start_hub()
        view = second.view("api-2")
        assert view["status"] == "done"
        assert view["progress"]["fraction"] == 1.0
        assert [r["training_id"] for r in second.get_json("/api/runs")["runs"]] == ["api-2"]

    def test_live_run(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        hub = start_hub()
        produce("forever", "api-3")
        document = openapi()
        deadline = time.monotonic() + 15
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            runs = hub.get_json("/api/runs")["runs"]
            if runs and runs[0]["status"] == "running":
                break
            time.sleep(0.02)
        check(document, "RunList", {"runs": runs, "time": 0.0})
        assert runs[0]["liveness"] == "alive"
        view = hub.view("api-3")
        assert view["liveness"] == "alive"
        assert view["progress"]["total_steps"] == 100


class TestErrors:
    """Unknown runs, bad ids and bad parameters get a JSON error with a code."""

    @pytest.mark.parametrize(
        ("path", "status", "code"),
        [
            ("/api/runs/nope", 404, "not_found"),
            ("/api/runs/nope/history", 404, "not_found"),
            ("/api/runs/%3Cscript%3E", 400, "bad_training_id"),
            ("/api/runs?limit=0", 400, "bad_limit"),
            ("/api/runs?limit=x", 400, "bad_limit"),
            ("/events?rate=0", 400, "bad_rate"),
            ("/events?rate=nan", 400, "bad_rate"),
            ("/events?run=..", 400, "bad_training_id"),
            ("/nothing/here", 404, "not_found"),
        ],
    )
    def test_error(
        self, start_hub: Callable[..., WebHub], path: str, status: int, code: str
    ) -> None:
        hub = start_hub()
        got, headers, body = hub.request(path)
        assert got == status
        assert headers["content-type"] == "application/json"
        error = orjson.loads(body)
        check(openapi(), "Error", error)
        assert error["error"]["code"] == code


class TestHeaders:
    """Every answer carries a strict Content-Security-Policy; the page and its files load."""

    def test_page_and_files(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub()
        for path, kind in [
            ("/", "text/html"),
            ("/static/app.js", "text/javascript"),
            ("/static/chart.js", "text/javascript"),
            ("/static/style.css", "text/css"),
        ]:
            status, headers, body = hub.request(path)
            assert status == 200, path
            assert headers["content-type"].startswith(kind), headers
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert body
