"""``python -m pulse_transports.cli``: the ``pulse`` command without its script."""

from __future__ import annotations

from pulse_transports.cli import main

if __name__ == "__main__":
    main(prog_name="pulse")
