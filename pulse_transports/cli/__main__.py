"""``python -m pulse_transports.cli``: the ``pulse`` command without its script."""

from __future__ import annotations

from pulse_transports.cli import run

if __name__ == "__main__":
    run(prog_name="pulse")
