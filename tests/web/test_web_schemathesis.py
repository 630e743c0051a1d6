"""Schemathesis, a fuzzer nobody here wrote, against a live ``pulse serve --http``.

It reads the hub's own ``/openapi.json`` and sends generated requests --
valid ones, which must be accepted and answered as documented (status,
content type, JSON or SSE body, headers), boundary and invalid ones, which
must be refused with a 4xx, never a server error. ``/events`` is fuzzed too:
its text/event-stream is read until the request timeout and each message is
checked against ``SseMessage``. Examples are bounded so the test stays under
a minute on a loaded machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from pagekit import Producer, WebHub

#: Generated requests per operation in the fuzzing phase.
MAX_EXAMPLES = 8


def schemathesis(hub: WebHub, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the schemathesis CLI against *hub*, showing its token as a local client would.

    It runs in the hub's scratch folder: schemathesis keeps a cache in its working folder.
    """
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{hub.base}openapi.json",
            "--header",
            f"Authorization: Bearer {hub.token}",
            "--request-timeout",
            "1",
            "--workers",
            "1",
            "--seed",
            "16",
            "--no-color",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=hub.home.parent,
    )


class TestSchemathesis:
    """Every operation answers as its OpenAPI description says, for generated requests."""

    def test_fuzzing_and_boundaries(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        """Examples, boundary values and fuzzed requests: no failure of any check."""
        hub = start_hub()
        run = produce("error", "st-run-1")  # an errored run linked to a flow run
        run.open_gate(1)
        assert run.wait() == 0
        result = schemathesis(
            hub,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--checks",
            "all",
        )
        report = result.stdout + result.stderr
        assert result.returncode == 0, report[-6000:]
        assert "Tested: 8" in report  # every operation, /events included
        assert " passed" in report

    def test_token_is_required(self, start_hub: Callable[..., WebHub]) -> None:
        """Without the token every operation is refused: schemathesis then finds failures."""
        hub = start_hub()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{hub.base}openapi.json",
                "--request-timeout",
                "1",
                "--phases",
                "examples",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=hub.home.parent,
        )
        # The document itself needs the token: schemathesis cannot even load it.
        assert result.returncode != 0
        assert "401" in result.stdout + result.stderr
