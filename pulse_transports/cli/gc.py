"""``pulse gc``: remove the runs the ``[retention]`` settings no longer keep.

This module owns the ``gc`` command. Without ``--yes`` it only lists what
would be removed (and why) and what would be freed; with ``--yes`` it removes
those runs, keeping each one's Flow History record in
``<home>/logs/removed.jsonl``. The rules are :mod:`pulse_transports.retention`'s;
options given here override the configuration's ``[retention]`` table.
"""

from __future__ import annotations

from pathlib import Path

import click

from pulse_transports.cli._common import EXIT_USAGE, home_option, main
from pulse_transports.cli.ls import fail, open_home, print_json


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


@main.command("gc")
@click.option("--yes", is_flag=True, help="Remove the runs (else only list them).")
@click.option("--keep-runs", type=int, default=None, help="Keep at most this many runs.")
@click.option("--max-bytes", type=int, default=None, help="Keep at most this many log bytes.")
@click.option("--max-age-days", type=float, default=None, help="Remove logs older than this.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or result) as JSON.")
@home_option
def gc_command(
    yes: bool,
    keep_runs: int | None,
    max_bytes: int | None,
    max_age_days: float | None,
    as_json: bool,
    home: Path | None,
) -> None:
    """Remove old runs beyond the [retention] limits (lists them unless --yes).

    Never removes a live run, nor a run of a flow run that is kept; a removed
    run's Flow History record stays (Flows History still shows it).

    \b
    Examples:
      pulse gc                     what would be removed, and why
      pulse gc --yes               remove it
      pulse gc --keep-runs 100 --yes
    """
    import time

    from pulse_core.errors import ConfigError
    from pulse_transports.retention import RetentionPolicy, collect, plan

    config = open_home(home)
    try:
        policy = RetentionPolicy.from_config(config)
        given = {"keep_runs": keep_runs, "max_bytes": max_bytes, "max_age_days": max_age_days}
        overrides = {key: value for key, value in given.items() if value is not None}
        if overrides:
            policy = RetentionPolicy.from_table(
                {**config.transport_options.get("retention", {}), **overrides}
            )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    started = time.perf_counter()
    chosen = plan(config.home, policy, lost_after=config.lost_after)
    removed = collect(config.home, chosen) if yes else chosen.remove
    seconds = time.perf_counter() - started
    freed = sum(d.size for d in removed)
    if as_json:
        print_json(
            {
                "removed" if yes else "would_remove": [
                    {"training_id": d.record.training_id, "bytes": d.size, "reason": d.reason}
                    for d in removed
                ],
                "bytes_freed" if yes else "bytes_would_free": freed,
                "kept_runs": chosen.kept,
                "kept_bytes": chosen.kept_bytes,
                "seconds": round(seconds, 3),
            }
        )
        return
    for doomed in removed:
        click.echo(f"{doomed.record.training_id}  {_mib(doomed.size)}  {doomed.reason}")
    verb = "removed" if yes else "would remove"
    click.echo(
        f"{verb} {len(removed)} runs ({_mib(freed)}); keeping {chosen.kept} runs "
        f"({_mib(chosen.kept_bytes)})"
    )
    if not yes and removed:
        click.echo("run `pulse gc --yes` to remove them")
