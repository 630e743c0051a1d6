"""``pulse ls/show/watch --source nats``: runs read from NATS JetStream.

This module owns what ``ls``, ``show`` and ``watch`` do with
``--source nats`` (specs/nats.md): the same options, output and exit codes
as for a home's logs. In the JSON, a run's ``log`` is its subject filter and
``source`` is ``"nats"``; ``ls --json`` names the server (redacted) instead
of the home. Liveness comes from silence alone: NATS cannot check a remote
writer's lock, so a run whose writer died is ``stale`` after ``stale_after``
and ``lost`` after ``lost_after`` seconds.

Exit codes: 0 ok; 1 NATS unreachable or refusing the credentials (and, for
``watch``, a run that ends badly); 2 usage; 3 unknown run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from pulse_transports.cli._common import EXIT_NOT_FOUND
from pulse_transports.cli._source import nats_errors, nats_source
from pulse_transports.cli.ls import (
    LsQuery,
    check_id,
    fail,
    print_json,
    render_table,
    select_rows,
)

if TYPE_CHECKING:
    from pulse_core.events import Event
    from pulse_core.state import RunState
    from pulse_transports.nats import NatsRunRecord, NatsSource


def ls_nats(query: LsQuery, connection: dict[str, Any]) -> None:
    """``pulse ls --source nats``: the runs in NATS, newest first (bucket, then stream)."""
    source = nats_source(query.home, connection)
    with nats_errors():
        records = source.recover()
    summaries = [dict(r.summary) for r in records]
    rows = select_rows(summaries, query.status, query.flow_run_id, query.limit)
    if query.as_json:
        print_json({"source": _source_info(source), "runs": rows})
        return
    if not rows:
        click.echo(f"no runs in NATS at {source.options.shown}")
        return
    render_table(rows, Path(source.options.shown))


def _source_info(source: NatsSource) -> dict[str, Any]:
    return {
        "kind": "nats",
        "url": source.options.shown,
        "stream": source.store.stream,
        "bucket": source.store.bucket,
    }


def nats_document(record: NatsRunRecord, source: NatsSource, now: float) -> dict[str, Any]:
    """The ``pulse show --source nats --json`` object: ``pulse show``'s, from NATS."""
    from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view

    state = record.state
    at = state.last_event_at if record.liveness == "lost" and state.last_event_at else now
    return {
        "training_id": record.training_id,
        "liveness": record.liveness,
        "writer_alive": None,
        "log": {
            "path": f"{source.options.shown} {record.summary['log']}",
            "bad_lines": record.bad_messages,
            "offset": record.stream_seq,
        },
        "source": {**_source_info(source), "origin": record.origin},
        "view": to_view(state, now=at, liveness=record.liveness),
        "v1": to_v1(state, liveness=record.liveness),
        "history": to_history_record(state, liveness=record.liveness, now=at),
        "metric_history": to_metric_history(state),
    }


def show_nats(
    training_id: str, as_json: bool, home: Path | None, connection: dict[str, Any]
) -> None:
    """``pulse show --source nats``: one run from NATS."""
    from pulse_transports.cli.show import render

    check_id(training_id)
    source = nats_source(home, connection)
    with nats_errors():
        record = source.load_run(training_id)
    document = nats_document(record, source, time.time())
    if as_json:
        print_json(document)
        return
    render({**document, "now": time.time()})


# -- watch -----------------------------------------------------------------------------


class NatsWatch:
    """One run followed from NATS: what ``watch`` draws (the shape of ``RunWatch``)."""

    def __init__(self, source: NatsSource, record: NatsRunRecord) -> None:
        from pulse_core.reducer import Folder

        self.source = source
        self.training_id = record.training_id
        self.folder = Folder(record.state)
        self.stream_seq = record.stream_seq
        self.liveness: str = record.liveness
        self.stale_after = source.stale_after
        self.lost_after = source.lost_after
        self.log = record.summary["log"]

    @property
    def follower(self) -> NatsWatch:
        """What ``watch``'s screen reads the state from (``follower.state``)."""
        return self

    @property
    def state(self) -> RunState:
        """The run's state so far."""
        return self.folder.state

    def apply(self, event: Event) -> bool:
        """Fold a new event; False for one already folded."""
        if event.training_id != self.training_id or event.seq <= self.folder.last_seq:
            return False
        self.folder.apply(event)
        return True

    def check(self, now: float) -> str | None:
        """Recompute the liveness; return it if it changed."""
        liveness = self.source.liveness(self.state, now)
        changed = liveness if liveness != self.liveness else None
        self.liveness = liveness
        return changed

    def row(self, now: float) -> dict[str, Any]:
        """The run's ``ls`` row as of now."""
        from pulse_core.projections import to_summary

        row = to_summary(
            self.state,
            liveness=self.liveness,  # type: ignore[arg-type]
            now=now,
            training_id=self.training_id,
        )
        row["log"] = self.log
        row["source"] = "nats"
        return row


async def _pick(source: NatsSource, wait: float | None) -> NatsRunRecord | None:
    """The most recently active live run, waiting up to *wait* seconds for one."""
    deadline = None if wait is None else time.monotonic() + wait
    told = False
    while True:
        records = await source.arecover()
        live = [r for r in records if r.liveness in ("alive", "stale")]
        if live:
            return max(live, key=lambda r: (r.state.last_event_at or 0.0, r.training_id))
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if not told:
            click.echo(
                f"waiting for a run in NATS at {source.options.shown} (Ctrl-C to stop)", err=True
            )
            told = True
        await asyncio.sleep(1.0)


async def _watch(
    source: NatsSource, training_id: str | None, once: bool, timeout: float | None, as_json: bool
) -> int:
    from rich.console import Console

    from pulse_transports.cli.watch import _Screen
    from pulse_transports.nats import StreamReader, run_filter

    if training_id is not None:
        record = await source.aload_run(training_id)
    else:
        found = await _pick(source, wait=0 if once else timeout)
        if found is None:
            fail(
                f"no live run in NATS at {source.options.shown} (see pulse ls --source nats)",
                EXIT_NOT_FOUND,
            )
        record = await source.aload_run(found.training_id)
    watch = NatsWatch(source, record)
    screen = _Screen(Console(highlight=False), cast(Any, watch), as_json)
    done = screen.start(once)
    if done is not None:
        return done
    deadline = None if timeout is None else time.monotonic() + timeout
    async with source.session(reconnect=True) as js:
        reader = StreamReader(
            js,
            source.store.stream,
            run_filter(watch.training_id),
            policy="by_start_sequence",
            start_seq=watch.stream_seq + 1,
        )
        await reader.open()
        try:
            with screen:
                while True:
                    wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                    delivery = await reader.next(timeout=max(wait, 0.01))
                    news = False
                    if delivery is not None and delivery.event is not None:
                        event = delivery.event
                        if watch.apply(event):
                            news = True
                            screen.event(event)
                    if watch.check(time.time()) is not None:
                        screen.emit("liveness")
                    if watch.liveness in ("ended", "lost"):
                        return screen.finish()
                    screen.tick(news)
                    if deadline is not None and time.monotonic() >= deadline:
                        return 0
        finally:
            await reader.close()


def watch_nats(
    training_id: str | None,
    once: bool,
    timeout: float | None,
    as_json: bool,
    home: Path | None,
    connection: dict[str, Any],
) -> None:
    """``pulse watch --source nats``: follow a run live from NATS."""
    if training_id is not None:
        check_id(training_id)
    source = nats_source(home, connection)
    try:
        with nats_errors():
            code = asyncio.run(_watch(source, training_id, once, timeout, as_json))
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)
