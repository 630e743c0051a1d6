"""``pulse v1 [ID]``: the PULSE v1 snapshot, rebuilt from the v2 events.

This module owns the ``v1`` command. Without an ID it picks the run the v1
slot (``training_status.json``) would show, as
:func:`pulse_transports.history.v1_choice` decides: the most recently active
live run (alive or stale; latest last event), else the run -- ended or lost
-- whose last event is the latest. A lost run is shown as
``status: "error"`` with a message starting ``training process lost``.

``pulse v1 --json`` prints exactly the six v1 keys, as the v1 file has them::

    {"status": str, "epoch": int, "total_epochs": int, "loss": float | null,
     "message": str, "timestamp": "2026-11-29T01:37:24.123Z" | null}
"""

from __future__ import annotations

from pathlib import Path

import click

from pulse_transports.cli._common import home_option, main
from pulse_transports.cli.ls import check_id, open_home, print_json, shown_run


@main.command("v1")
@click.argument("training_id", metavar="[ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print only the six-key v1 JSON object.")
@home_option
def v1_command(training_id: str | None, as_json: bool, home: Path | None) -> None:
    """Print the v1 snapshot of a run, rebuilt from its v2 log.

    Without ID: the most recently active live run (alive or stale), else the
    run whose last event is the latest -- the run the v1 slot shows.

    \b
    Examples:
      pulse v1
      pulse v1 --json > training_status.json
      pulse v1 20261129-013724-123-9f2c41d07b
    """
    from pulse_core.projections import to_v1

    if training_id is not None:
        check_id(training_id)
    config = open_home(home)
    record = shown_run(config, training_id, f"no runs under {config.home}")
    snapshot = to_v1(record.state, liveness=record.liveness)
    if as_json:
        print_json(snapshot, sort_keys=False)  # the v1 field order, as on disk
        return
    click.echo(f"run {record.training_id} ({record.liveness})")
    for key, value in snapshot.items():
        click.echo(f"  {key:<13} {value if value is not None else 'null'}")
