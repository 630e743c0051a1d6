"""Retention: a home's runs kept within limits, and what is left of removed ones.

This module owns the ``[retention]`` settings (:class:`RetentionPolicy`), the
choice of runs to remove (:func:`plan`), their removal (:func:`collect`), the
history of removed runs (``<home>/logs/removed.jsonl``, :func:`removed_records`)
and the hub's periodic task (:class:`RetentionFeed`). ``pulse gc`` and the hub
use it.

Rules:

* Only a run whose writer is gone can be removed: it ended (done, error,
  cancelled) or it is lost. A live or stale run is never removed, and it
  counts against the limits like every other.
* Newest first (by the run's first event), a run is *due* when it is beyond
  the first ``keep_runs`` runs, or its log was last written more than
  ``max_age_days`` ago, or the logs up to it (newest first) take more than
  ``max_bytes``.
* A **flow run is kept** while any of its runs is live or not due: its runs
  (all attempts of all its steps, by ``flow_run_id``) are removed together,
  when every one of them is due, so a flow's history never loses half a run.
* A removed run keeps its Flow History record (outcome, duration, metrics,
  last error), its ``pulse ls`` row and its log size in
  ``<home>/logs/removed.jsonl``, written (and fsync'ed) before the log is
  deleted; ``FlowTrainer.records`` and the web's flows read it. That file
  keeps the newest :data:`REMOVED_KEEP` records.

Removal takes the run's lock (a writer that starts meanwhile keeps its run),
deletes the log, a compaction leftover and the lock file. Must never import
:mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, get_type_hints

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.errors import ConfigError
from pulse_core.liveness import ENDED, LOST, LOST_AFTER
from pulse_core.projections import to_history_record
from pulse_transports._logfile import fsync_dir
from pulse_transports._mailbox import trim_heap
from pulse_transports.config import Config, check_table
from pulse_transports.file import log_dir, run_file
from pulse_transports.history import HomeNotFound, RunRecord, recover
from pulse_transports.homemode import open_file

log = get_logger("pulse.retention")

#: The history of removed runs, one JSON object per line.
REMOVED_FILE: Final = "removed.jsonl"
#: Records kept in it (older ones are dropped when it is rewritten).
REMOVED_KEEP: Final = 100_000
_DAY: Final = 86400.0
#: Seconds after the hub starts before its first collection.
FIRST_DELAY: Final = 60.0


@attrs.frozen
class RetentionPolicy:
    """The ``[retention]`` table: how much of a home is kept.

    Attributes:
        keep_runs: the newest runs always kept (at most this many).
        max_bytes: the logs' total size, newest first, kept at most.
        max_age_days: logs not written for longer are removed.
        interval: seconds between two collections by the hub.
        enabled: False keeps everything (the hub and ``pulse gc`` remove nothing).
    """

    keep_runs: int = 5000
    max_bytes: int = 1 << 30
    max_age_days: float = 180.0
    interval: float = 600.0
    enabled: bool = True

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> RetentionPolicy:
        """The policy of a ``[retention]`` table (unset keys take the defaults).

        The table's keys and their kinds are the policy's fields.

        Raises:
            ConfigError: an unknown key, a value of the wrong kind or not positive.
        """
        values = check_table(table, get_type_hints(cls), what="[retention]")
        for key, value in values.items():
            if key != "enabled" and not value > 0:
                raise ConfigError(f"option {key!r} of [retention] must be positive, got {value}")
        return cls(**values)

    @classmethod
    def from_config(cls, config: Config) -> RetentionPolicy:
        """The policy of a resolved configuration (its ``retention`` table)."""
        return cls.from_table(config.transport_options.get("retention", {}))


@attrs.frozen
class Doomed:
    """A run chosen for removal, and why."""

    record: RunRecord
    size: int
    reason: str


@attrs.frozen
class Plan:
    """What a collection would do."""

    remove: list[Doomed]
    kept: int
    kept_bytes: int

    @property
    def freed(self) -> int:
        """Bytes the removal frees."""
        return sum(d.size for d in self.remove)


def _flow_run(record: RunRecord) -> str | None:
    # From the summary: an ended run's state stays encoded (a pass over
    # thousands of runs decodes only the few it removes).
    flow = record.summary.get("flow")
    return (flow.get("flow_run_id") or None) if isinstance(flow, dict) else None


def plan(
    home: Path | str,
    policy: RetentionPolicy,
    *,
    now: float | None = None,
    lost_after: float = LOST_AFTER,
) -> Plan:
    """Choose the runs to remove (see the module doc); removes nothing.

    Args:
        home: the PULSE home.
        policy: the limits.
        now: the current time (Unix seconds).
        lost_after: the configured silence after which a run is lost.

    Raises:
        HomeNotFound: if *home* does not exist.
    """
    now = time.time() if now is None else now
    records = recover(home, now=now, lost_after=lost_after)  # newest first
    sizes: dict[str, tuple[int, float]] = {}
    for record in records:
        try:
            st = os.stat(record.log)
            sizes[record.training_id] = (st.st_size, st.st_mtime)
        except OSError:
            sizes[record.training_id] = (0, now)
    due: dict[str, str] = {}
    total = 0
    oldest = now - policy.max_age_days * _DAY
    for rank, record in enumerate(records):
        size, mtime = sizes[record.training_id]
        total += size
        if not policy.enabled or record.liveness not in (ENDED, LOST) or record.writer:
            continue
        if rank >= policy.keep_runs:
            due[record.training_id] = f"beyond the newest {policy.keep_runs} runs"
        elif mtime < oldest:
            due[record.training_id] = f"not written for over {policy.max_age_days:g} days"
        elif total > policy.max_bytes:
            due[record.training_id] = f"over the {policy.max_bytes} byte budget"
    # A flow run is kept while any of its runs is kept.
    kept_flows = {_flow_run(r) for r in records if r.training_id not in due}
    remove = [
        Doomed(r, sizes[r.training_id][0], due[r.training_id])
        for r in records
        if r.training_id in due and (_flow_run(r) is None or _flow_run(r) not in kept_flows)
    ]
    gone = {d.record.training_id for d in remove}
    kept_bytes = sum(size for tid, (size, _) in sizes.items() if tid not in gone)
    return Plan(remove=remove, kept=len(records) - len(remove), kept_bytes=kept_bytes)


def _history_line(doomed: Doomed, now: float) -> bytes:
    record = doomed.record
    state = record.state
    history = to_history_record(state, liveness=record.liveness, now=now)
    history["liveness"] = record.liveness
    history["name"] = state.meta.name if state.meta else None
    history["created_at"] = state.created_at
    entry = {
        "training_id": record.training_id,
        "removed_at": now,
        "reason": doomed.reason,
        "bytes": doomed.size,
        "record": history,
        "summary": record.summary,
    }
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


def _remove_run(home: Path, record: RunRecord) -> bool:
    """Delete one run's files under its lock; False if a writer holds it now."""
    lock = run_file(home, record.training_id, ".lock")
    try:
        fd = open_file(lock, os.O_RDWR | os.O_CREAT)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer took the run since the plan: it is live
        for path in (record.log, record.log + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while holding it: a writer that opened it retries (_take_lock)
        return True
    finally:
        os.close(fd)


def collect(home: Path | str, chosen: Plan, *, now: float | None = None) -> list[Doomed]:
    """Remove the runs of *chosen*, keeping their history first; the runs removed."""
    now = time.time() if now is None else now
    root = Path(home)
    folder = log_dir(root).parent
    history = folder / REMOVED_FILE
    removed: list[Doomed] = []
    if not chosen.remove:
        return removed
    with history.open("ab") as handle:
        handle.write(b"".join(_history_line(d, now) for d in chosen.remove))
        handle.flush()
        os.fsync(handle.fileno())
    for doomed in chosen.remove:
        if _remove_run(root, doomed.record):
            removed.append(doomed)
    fsync_dir(log_dir(root))
    _trim_history(history)
    if removed:
        log.info(
            "pulse retention removed runs",
            runs=len(removed),
            freed=sum(d.size for d in removed),
            kept=chosen.kept,
        )
    return removed


def _trim_history(path: Path) -> None:
    """Keep the newest REMOVED_KEEP records (a run kept after all is harmless in it)."""
    try:
        if path.stat().st_size < REMOVED_KEEP * 256:
            return  # certainly fewer records than that: not worth counting
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError:
        return
    if len(lines) <= REMOVED_KEEP:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(lines[-REMOVED_KEEP:]))
    os.replace(tmp, path)


def removed_records(home: Path | str) -> list[dict[str, Any]]:
    """The Flow History records of removed runs (newest removal last; logs gone)."""
    path = log_dir(Path(home)).parent / REMOVED_FILE
    try:
        data = path.read_bytes()
    except OSError:
        return []
    present = {p.stem for p in log_dir(Path(home)).glob("*.jsonl")}
    out: list[dict[str, Any]] = []
    for line in data.splitlines():
        try:
            entry = orjson.loads(line)
            record = entry["record"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if not isinstance(record, dict) or entry.get("training_id") in present:
            continue  # a run whose log is back (a reused id) is read from its log
        record["removed_at"] = entry.get("removed_at")
        record["log_path"] = ""
        out.append(record)
    return out


@attrs.define(eq=False, repr=False)
class RetentionFeed:
    """The hub's periodic collection: a feed task that never touches the bus.

    ``child_timeout`` is the longest a collection child may take before the
    hub kills it and makes that pass itself (:meth:`_collect`).
    """

    home: Path
    policy: RetentionPolicy
    lost_after: float = LOST_AFTER
    child_timeout: float = attrs.field(default=600.0, kw_only=True)

    def __repr__(self) -> str:
        return f"RetentionFeed({str(self.home)!r})"

    def run_once(self) -> list[Doomed]:
        """Plan and collect now (blocking)."""
        try:
            return collect(self.home, plan(self.home, self.policy, lost_after=self.lost_after))
        except HomeNotFound:
            return []

    def _collect(self) -> None:
        """One collection, made by a child process: the hub holds none of what it reads.

        A pass reads every run's record (about 6 MiB for 1,000 runs); in the
        hub, what it keeps meanwhile lands among those allocations and keeps
        their allocator arenas in use once they are freed (issue 21.3). The
        child prints what it removed as its last line; the hub logs it.
        """
        policy = orjson.dumps(attrs.asdict(self.policy)).decode()
        args = [sys.executable, "-m", __spec__.name, os.fspath(self.home), policy]
        try:
            done = subprocess.run(
                [*args, repr(self.lost_after)],
                capture_output=True,
                check=False,
                stdin=subprocess.DEVNULL,
                timeout=self.child_timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:  # no interpreter; a hung child
            code, error, report = None, f"{type(exc).__name__}: {exc}", None
        else:
            lines = done.stdout.splitlines()
            try:
                report = orjson.loads(lines[-1]) if done.returncode == 0 and lines else None
            except orjson.JSONDecodeError:
                report = None
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            code, error = done.returncode, last[0] if last else ""
        if not isinstance(report, dict):
            # The home stays bounded whatever the child does: collect here.
            log.warning(
                "pulse retention child failed; collecting in the hub", code=code, error=error
            )
            self.run_once()
            trim_heap()
        elif report.get("runs"):
            log.info("pulse retention removed runs", **report)

    async def __call__(self, bus: object) -> None:
        if not self.policy.enabled:
            return
        # Not at once: a hub's start is busy enough (and short-lived hubs never pay).
        await asyncio.sleep(min(self.policy.interval, FIRST_DELAY))
        while True:
            try:
                await asyncio.to_thread(self._collect)
            except OSError as exc:
                log.warning("pulse retention failed; trying again later", error=str(exc))
            await asyncio.sleep(self.policy.interval)


def _main(argv: list[str]) -> int:
    """The hub's collection child: HOME POLICY_JSON LOST_AFTER; prints what it removed."""
    home, policy, lost_after = argv
    feed = RetentionFeed(Path(home), RetentionPolicy(**orjson.loads(policy)), float(lost_after))
    removed = feed.run_once()
    report = {"runs": len(removed), "freed": sum(d.size for d in removed)}
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
