"""Generate the PULSE v2 conformance vectors and the generated parts of protocol.md.

Run from anywhere with the package installed::

    python specs/generate.py          # (re)write every generated file
    python specs/generate.py --check  # exit 1 if any generated file differs on disk

What it writes, all deterministically (no clock; the corpus uses one fixed seed):

* ``vectors/NAME.jsonl``: the input logs, built from event objects encoded with
  :func:`pulse_core.codec.encode`, plus hand-made lines (broken, future-version
  or non-conforming ones) written byte for byte.
* ``vectors/NAME.expected.json``: what pulse_core computes from each log (see
  :func:`expected`), as JSON with sorted keys and an indent of 2.
* ``corpus/differential.jsonl``: the generated differential corpus (see
  ``corpus.py``): 520 random logs from a fixed seed, each with what pulse_core
  computes at three ``now`` values.
* the lifecycle table and diagram in ``protocol.md``, between the
  ``<!-- BEGIN GENERATED: lifecycle -->`` and ``<!-- END GENERATED: lifecycle -->``
  markers, from :data:`pulse_core.lifecycle.TABLE` and
  :func:`pulse_core.lifecycle.build_machine`.

This is a development tool beside the library: it may do I/O, and nothing in
``pulse_core`` or ``pulse_transports`` imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from pulse_core.codec import decode, encode, to_dict
from pulse_core.errors import DecodeError
from pulse_core.events import (
    STATUSES,
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    UnknownEvent,
)
from pulse_core.lifecycle import TABLE, build_machine
from pulse_core.liveness import liveness_of
from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
from pulse_core.reducer import replay
from pulse_core.statecodec import STATE_FORMAT, state_to_obj

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # the corpus module lives beside this script

SPECS = Path(__file__).resolve().parent
VECTORS = SPECS / "vectors"
CORPUS = SPECS / "corpus" / "differential.jsonl"
PROTOCOL = SPECS / "protocol.md"

#: 2026-01-01T00:00:00Z; every vector's clock starts here.
T0 = 1767225600.0

BEGIN_LIFECYCLE = "<!-- BEGIN GENERATED: lifecycle -->"
END_LIFECYCLE = "<!-- END GENERATED: lifecycle -->"

LineKind = Literal["ok", "rejected", "nonconforming"]


@dataclass(frozen=True)
class Raw:
    """A hand-made line, written byte for byte.

    ``kind`` says what a conforming reader does with it: ``ok`` decodes and
    the schema accepts it; ``rejected`` fails to decode (and the schema
    rejects it when it is JSON at all); ``nonconforming`` decodes but no
    conforming writer produces it, so the schema rejects it.
    """

    data: bytes
    kind: LineKind
    why: str
    newline: bool = True


Line = Event | Raw


@dataclass
class Vector:
    """One conformance vector: a log and the time its view is taken at."""

    name: str
    description: str
    lines: list[Line]
    now: float


@dataclass
class Clock:
    """Builds the events of one run: seq counts up, time moves forward."""

    training_id: str
    t: float = T0
    seq: int = 0
    v: int = 2

    def tick(self, dt: float) -> tuple[int, float]:
        """Advance by *dt* seconds and one seq; return the new seq and time."""
        self.seq += 1
        self.t += dt
        return self.seq, self.t

    def _env(self, dt: float) -> dict[str, Any]:
        seq, t = self.tick(dt)
        return {"training_id": self.training_id, "seq": seq, "timestamp": t, "v": self.v}

    def meta(self, dt: float = 0.0, **fields: Any) -> RunMeta:
        return RunMeta(**self._env(dt), **fields)

    def status(self, status: str, message: str = "", dt: float = 1.0) -> StatusChanged:
        return StatusChanged(**self._env(dt), status=status, message=message)

    def progress(self, dt: float = 1.0, **fields: Any) -> Progress:
        return Progress(**self._env(dt), **fields)

    def metrics(self, dt: float = 1.0, **fields: Any) -> Metrics:
        return Metrics(**self._env(dt), **fields)

    def error(self, code: str, message: str, dt: float = 1.0, **fields: Any) -> ErrorReported:
        return ErrorReported(**self._env(dt), error_code=code, message=message, **fields)

    def heartbeat(self, dt: float = 5.0) -> Heartbeat:
        return Heartbeat(**self._env(dt))

    def dropped(self, count: int, reason: str = "", dt: float = 1.0) -> Dropped:
        return Dropped(**self._env(dt), count=count, reason=reason)

    def unknown(self, tag: str, dt: float = 1.0, **data: Any) -> UnknownEvent:
        return UnknownEvent(**self._env(dt), type=tag, data=data)


def extended(event: Event, **extra: Any) -> Raw:
    """Encode *event* with extra top-level fields, as a newer writer would."""
    obj = to_dict(event)
    obj.update(extra)
    return Raw(orjson.dumps(obj), "ok", "known type with fields this version does not know")


def envelope(clock: Clock, tag: object, dt: float = 1.0, **fields: Any) -> dict[str, Any]:
    """Return a wire object of type *tag* with a fresh envelope, for hand-made lines."""
    seq, t = clock.tick(dt)
    obj: dict[str, Any] = {
        "type": tag,
        "training_id": clock.training_id,
        "seq": seq,
        "timestamp": t,
        "v": clock.v,
    }
    obj.update(fields)
    return obj


def raw(obj: object, kind: LineKind, why: str) -> Raw:
    """A hand-made line from a JSON value."""
    return Raw(orjson.dumps(obj), kind, why)


def loss_curve(i: int) -> float:
    """A deterministic, slightly noisy, falling loss (pure arithmetic, no libm)."""
    jitter = ((i * 7919) % 97 - 48) / 4800.0
    return round(2.5 / (1.0 + i / 40.0) + 0.05 + jitter, 4)


# --- the vectors ---------------------------------------------------------------


def happy_run() -> Vector:
    c = Clock("happy-run")
    lines: list[Line] = [
        c.meta(
            name="resnet18-cifar10",
            total_epochs=3,
            total_steps=4,
            pid=4242,
            host="gpu-box-1",
            world_size=1,
            labels={"dataset": "cifar10", "model": "resnet18"},
        ),
        c.status("preparing", "loading dataset"),
        c.status("preparing", "checking config", dt=2.0),
        c.status("running", "training", dt=3.0),
    ]
    i = 0
    for epoch in range(1, 4):
        for step in (2, 4):
            i += 1
            lines.append(c.progress(epoch=epoch, step=step, total_steps=4, dt=2.5))
            lines.append(c.metrics(loss=loss_curve(i * 10), dt=0.0))
        lines.append(
            c.metrics(
                loss=loss_curve(i * 10 + 1),
                time_per_epoch=5.0,
                samples_per_second=10000.0 + epoch * 125.5,
                tokens_per_second=None,
                extra={"accuracy": 0.5 + epoch / 10.0, "lr": 0.001},
                dt=0.0,
            )
        )
        lines.append(c.heartbeat(dt=0.5))
    lines.append(c.status("cooling_down", "saving checkpoint", dt=1.0))
    lines.append(c.status("done", "finished: 3 epochs", dt=4.0))
    return Vector(
        "happy_run",
        "meta, preparing (restated once), running with progress and metrics, "
        "cooling_down, done: the whole happy path",
        lines,
        c.t + 2.0,
    )


def skipped_preparing() -> Vector:
    c = Clock("skipped-preparing")
    lines: list[Line] = [
        c.meta(total_epochs=2),
        c.status("running", "training"),
        c.progress(epoch=1, total_epochs=2),
        c.metrics(loss=0.9, tokens_per_second=51234.5),
        c.progress(epoch=2),
        c.metrics(loss=0.7, tokens_per_second=50987.25),
        c.status("done", "done without post-processing", dt=3.0),
    ]
    return Vector(
        "skipped_preparing",
        "idle -> running -> done: both preparing and cooling_down are skipped",
        lines,
        c.t + 1.0,
    )


def error_run() -> Vector:
    c = Clock("error-run")
    lines: list[Line] = [
        c.meta(name="llama-lora", total_epochs=5, total_steps=100),
        c.status("preparing", "loading dataset"),
        c.status("running", "training"),
        c.progress(epoch=1, step=40, total_steps=100),
        c.metrics(loss=3.21, samples_per_second=88.5),
        c.progress(epoch=1, step=80),
        c.error(
            "CUDA_OOM",
            "CUDA out of memory: tried to allocate 2.00 GiB",
            is_retryable=True,
            details={
                "trace_id": "7f3a9c2e",
                "device": "cuda:0",
                "batch_size": 64,
                "context": {"allocated_gib": 21.5, "reserved_gib": 23.0},
            },
            epoch=1,
            step=81,
        ),
        c.status("error", "CUDA out of memory", dt=0.0),
    ]
    return Vector(
        "error_run",
        "an error event with details (retryable CUDA_OOM), then the terminal status error",
        lines,
        c.t + 10.0,
    )


def error_recovered() -> Vector:
    c = Clock("error-recovered")
    lines: list[Line] = [
        c.meta(total_epochs=2),
        c.status("running", "training"),
        c.progress(epoch=1),
        c.error(
            "DATASET_NOT_FOUND",
            "shard 17 missing, skipped",
            is_retryable=False,
            details={"path": "data/shard-17.parquet"},
            epoch=1,
        ),
        c.metrics(loss=1.25),
        c.progress(epoch=2),
        c.metrics(loss=1.5),
        c.status("cooling_down", "saving"),
        c.status("done", "finished with warnings"),
    ]
    return Vector(
        "error_recovered",
        "an error event alone does not end a run: it continues to done (outcome success)",
        lines,
        c.t + 1.0,
    )


def cancelled_run() -> Vector:
    c = Clock("cancelled-run")
    lines: list[Line] = [
        c.meta(name="bert-finetune", total_epochs=10),
        c.status("preparing", "downloading tokenizer"),
        c.status("running", "training", dt=4.0),
        c.progress(epoch=1, step=10, total_steps=50),
        c.metrics(loss=2.0, samples_per_second=250.0),
        c.progress(epoch=1, step=20),
        c.status("cancelled", "stopped by the user from the TrainingPanel"),
        c.heartbeat(dt=1.0),
    ]
    return Vector(
        "cancelled_run",
        "cancelled while running; a heartbeat after the end is applied, not an anomaly",
        lines,
        c.t + 30.0,
    )


def duplicates_and_late() -> Vector:
    c = Clock("dup-late")
    e1 = c.meta(total_epochs=4)
    e2 = c.status("running", "training")
    e3 = c.progress(epoch=1)
    e4 = c.metrics(loss=1.0)
    e5 = c.progress(epoch=2)
    e6 = c.metrics(loss=0.8)
    e7 = c.progress(epoch=3)
    e8 = c.status("done", "finished")
    lines: list[Line] = [e1, e2, e2, e3, e5, e4, e3, e6, e8, e7, e8]
    return Vector(
        "duplicates_and_late",
        "a repeated line is a duplicate; an event that arrives after a later one fills "
        "a gap and is recorded as late_event, not applied; seq 7 arrives after done",
        lines,
        c.t + 1.0,
    )


def coalesced_gaps() -> Vector:
    c = Clock("coalesced")
    events: list[Event] = [c.meta(total_epochs=1, total_steps=1000)]
    events.append(c.status("running", "training"))
    for step in range(1, 101):
        events.append(c.progress(epoch=1, step=step * 10, dt=0.125))
        events.append(c.metrics(loss=loss_curve(step), dt=0.0))
    events.append(c.dropped(12, "file sink: disk full, buffer overflowed"))
    events.append(c.status("done", "finished"))
    # A sink forwarding a coalesced subset: the first two events, every 25th
    # progress/metrics pair, and the last three (dropped, done).
    kept: list[Line] = list(events[:2])
    for index in range(2, len(events) - 2):
        if (index - 2) // 2 % 25 == 24:
            kept.append(events[index])
    kept.extend(events[-2:])
    return Vector(
        "coalesced_gaps",
        "seq gaps as a coalescing sink produces them (normal: missing/gaps recorded, "
        "no anomaly) and a dropped event (degraded)",
        kept,
        c.t + 1.0,
    )


def illegal_transitions() -> Vector:
    c = Clock("illegal")
    lines: list[Line] = [
        c.meta(),
        c.status("preparing", "loading"),
        c.status("done", "claims done straight from preparing"),
        c.status("cooling_down", "cooling down before running"),
        c.status("idle", "nothing leads back to idle"),
        c.status("running", "training"),
        c.status("preparing", "back to preparing"),
        c.status("cooling_down", "saving"),
        c.status("running", "back to running"),
        c.status("done", "finished"),
        c.status("running", "running again after done"),
        c.progress(epoch=9),
        c.status("error", "an error after done"),
        c.heartbeat(),
    ]
    return Vector(
        "illegal_transitions",
        "illegal status events are recorded as illegal_transition and not applied; "
        "after done everything but heartbeats is after_terminal",
        lines,
        c.t + 1.0,
    )


def future_version() -> Vector:
    c = Clock("future-v3", v=3)
    lines: list[Line] = [
        extended(c.meta(name="from-the-future"), experiment={"id": "exp-7"}, gpu_model="A100"),
        extended(c.status("preparing", "warming up"), phase_id=3),
        c.unknown("checkpoint", path="ckpt/step-0.pt", bytes=1048576),
        c.status("running", "training"),
        extended(c.progress(epoch=1, total_epochs=2), tokens_seen=123456),
        c.unknown("gpu_sample", gpus=[{"index": 0, "util": 0.93}]),
        raw(
            envelope(c, "status", status="paused", message="a status v2 does not know"),
            "nonconforming",
            "status value outside the seven lifecycle states",
        ),
        c.status("running", "resumed"),
        extended(c.metrics(loss=0.5, extra={"perplexity": 1.65}), loss_scale=65536.0),
        c.status("done", "finished"),
        c.unknown("summary", dt=0.5, note="an unknown event after done"),
    ]
    return Vector(
        "future_version",
        "lines from a v=3 writer: unknown fields are ignored, unknown types are counted "
        "and skipped, an unknown status value is an anomaly",
        lines,
        c.t + 1.0,
    )


def broken_lines() -> Vector:
    c = Clock("broken-lines")
    tid = c.training_id
    lines: list[Line] = [c.meta(total_epochs=2), c.status("preparing", "loading")]
    lines.append(Raw(b"this is not json", "rejected", "not JSON"))
    bad_id = envelope(c, "status", status="running", message="x")
    bad_id["training_id"] = "../x"
    lines.append(raw(bad_id, "rejected", "training_id with a path separator"))
    lines.append(c.status("running", "training"))
    lines.append(raw(envelope(c, "progress", epoch="2"), "rejected", "epoch is a string"))
    lines.append(c.progress(epoch=1, total_epochs=2))
    lines.append(raw(envelope(c, "metrics", loss=True), "rejected", "loss is a boolean"))
    lines.append(raw(envelope(c, "status", message="no status"), "rejected", "status missing"))
    lines.append(raw(envelope(c, "error", message="no code"), "rejected", "error_code missing"))
    no_seq = envelope(c, "heartbeat")
    del no_seq["seq"]
    lines.append(raw(no_seq, "rejected", "seq missing"))
    v1 = envelope(c, "heartbeat")
    v1["v"] = 1
    lines.append(raw(v1, "rejected", "protocol version 1"))
    no_v = envelope(c, "heartbeat")
    del no_v["v"]
    lines.append(raw(no_v, "rejected", "v missing"))
    lines.append(raw([1, 2, 3], "rejected", "a JSON array, not an object"))
    lines.append(raw("running", "rejected", "a JSON string, not an object"))
    lines.append(raw(envelope(c, 7), "rejected", "type is not a string"))
    lines.append(raw(envelope(c, ["status"]), "rejected", "type is an array"))
    lines.append(
        raw(
            envelope(c, "error", error_code="CUDA_OOM", message="m", is_retryable="yes"),
            "rejected",
            "is_retryable is a string",
        )
    )
    lines.append(
        Raw(
            b'{"type":"status","training_id":"' + tid.encode() + b'","seq":99,'
            b'"timestamp":1767225700.0,"status":"running","message":"\xff\xfe","v":2}',
            "rejected",
            "invalid UTF-8",
        )
    )
    long_id = envelope(c, "heartbeat")
    long_id["training_id"] = "a" * 129
    lines.append(raw(long_id, "rejected", "training_id of 129 characters"))
    empty_id = envelope(c, "heartbeat")
    empty_id["training_id"] = ""
    lines.append(raw(empty_id, "rejected", "empty training_id"))
    lines.append(
        raw(envelope(c, "metrics", extra={"acc": "high"}), "rejected", "extra value is a string")
    )
    lines.append(
        raw(envelope(c, "progress", step=None, epoch=2, total_steps=None), "ok", "explicit nulls")
    )
    lines.append(
        raw(
            envelope(c, "error", error_code="cuda oom", message="lower-case code"),
            "nonconforming",
            "error_code not UPPER_SNAKE",
        )
    )
    zero = envelope(c, "status", status="running", message="seq 0")
    zero["seq"] = 0
    c.seq -= 1
    lines.append(raw(zero, "nonconforming", "seq below 1 (bad_seq)"))
    lines.append(c.metrics(loss=0.42))
    torn = orjson.dumps(envelope(c, "status", status="done", message="finished"))
    lines.append(Raw(torn[:60], "rejected", "torn last line (no newline)", newline=False))
    return Vector(
        "broken_lines",
        "undecodable lines (bad JSON, unsafe or over-long training_id, wrong types, "
        "missing fields, v=1, non-objects, invalid UTF-8, a torn last line) are skipped "
        "and counted; decodable non-conforming lines are folded",
        lines,
        c.t + 1.0,
    )


def flow_linked() -> Vector:
    c = Clock("flow-train-0001")
    lines: list[Line] = [
        c.meta(
            name="nightly retrain",
            flow_id="flow-nightly-retrain",
            flow_run_id="fr-20260101-0001",
            flow_step_id="train",
            attempt=2,
            total_epochs=2,
            labels={"triggered_by": "schedule"},
        ),
        c.status("preparing", "loading dataset"),
        c.status("running", "training"),
        c.progress(epoch=1),
        c.metrics(loss=0.9, time_per_epoch=30.5, samples_per_second=512.0),
        c.progress(epoch=2, dt=30.5),
        c.metrics(loss=0.6, time_per_epoch=29.75, samples_per_second=520.0),
        c.status("cooling_down", "exporting model", dt=29.75),
        c.status("done", "model exported", dt=6.0),
    ]
    return Vector(
        "flow_linked",
        "a TRAIN step's run linked to its flow run (flow_id, flow_run_id, flow_step_id, "
        "attempt): what Flows History shows",
        lines,
        c.t + 60.0,
    )


def downsampled_metrics() -> Vector:
    c = Clock("ds")
    lines: list[Line] = [c.meta(total_epochs=3, total_steps=1000), c.status("running", "training")]
    for i in range(3000):
        if i % 100 == 0:
            lines.append(c.progress(epoch=i // 1000 + 1, step=i % 1000, dt=0.0))
        loss = 9.5 if i == 1234 else loss_curve(i)
        sps = 1000.0 + (i * 37) % 200 if i % 5 == 0 else None
        extra = {"lr": round(0.001 * (1 - i / 3000), 7)} if i % 50 == 0 else {}
        lines.append(c.metrics(loss=loss, samples_per_second=sps, extra=extra, dt=0.25))
    lines.append(c.status("done", "finished"))
    return Vector(
        "downsampled_metrics",
        "3000 loss samples: the history keeps at most 128 windows per metric, doubling "
        "the window width as needed; the spike at sample 1234 survives as a window max",
        lines,
        c.t + 1.0,
    )


def exact_min_max() -> Vector:
    c = Clock("minmax")
    lines: list[Line] = [
        c.meta(total_epochs=1),
        c.status("running", "training"),
        # The writer forwards a sample about once a second but sends the exact
        # min/max of every call: the best loss (0.5955) was never a sample.
        c.metrics(loss=0.9, extra={"acc": 0.1}, min={"loss": 0.9, "acc": 0.1}),
        c.metrics(
            loss=0.6117,
            extra={"acc": 0.5},
            min={"loss": 0.5955, "acc": 0.1},
            max={"loss": 0.9, "acc": 0.95},
        ),
        # Past the writer's cap of 64 extra names, new names are counted, not sent;
        # a min for a name the reader does not keep is ignored.
        c.metrics(loss=0.7, names_dropped=3, min={"loss": 0.61, "ghost": -5.0}),
        c.status("done", "finished"),
    ]
    return Vector(
        "exact_min_max",
        "metrics carrying the writer's exact min/max (best_loss below every sample) "
        "and names_dropped (metrics_dropped in the state)",
        lines,
        c.t + 1.0,
    )


def never_started() -> Vector:
    c = Clock("never-started")
    lines: list[Line] = [c.meta(name="queued", total_epochs=5), c.heartbeat(), c.heartbeat()]
    return Vector(
        "never_started",
        "a run that never left idle (meta and heartbeats only), read long after its "
        "writer fell silent: not_started, liveness lost",
        lines,
        c.t + 3600.0,
    )


def abandoned_run() -> Vector:
    c = Clock("abandoned")
    lines: list[Line] = [
        c.meta(total_epochs=3),
        c.status("running", "training"),
        c.progress(epoch=1),
        c.metrics(loss=1.1),
        c.heartbeat(),
    ]
    return Vector(
        "abandoned_run",
        "running, then silence for an hour (the process died): the view says lost, the "
        "live v1 snapshot says error 'training process lost...'",
        lines,
        c.t + 3600.0,
    )


def foreign_event() -> Vector:
    c = Clock("mine")
    other = Clock("someone-else")
    lines: list[Line] = [
        c.meta(),
        c.status("running", "training"),
        other.status("running", "another run's event in this log"),
        c.metrics(loss=0.3),
        c.status("done", "finished"),
    ]
    return Vector(
        "foreign_event",
        "a line of another training_id in a run's log is a foreign_event anomaly",
        lines,
        c.t + 1.0,
    )


def checkpoint_line(events: list[Event], lines_before: int, dt: float = 0.0) -> Raw:
    """A ``state_checkpoint`` line of the fold of *events* (what a file writer appends)."""
    state = replay(events)
    obj = {
        "type": "state_checkpoint",
        "v": 2,
        "training_id": state.training_id,
        "seq": state.last_seq,
        "timestamp": (state.last_event_at or T0) + dt,
        "format": STATE_FORMAT,
        "state": state_to_obj(state),
        "lines": lines_before,
    }
    return Raw(orjson.dumps(obj), "ok", "the folded state so far, written by the file writer")


def state_checkpoint() -> Vector:
    c = Clock("ckpt")
    events: list[Event] = [c.meta(total_epochs=2, total_steps=40), c.status("running", "training")]
    for i in range(24):
        events.append(c.progress(epoch=i // 20 + 1, step=i % 20, dt=0.5))
        events.append(c.metrics(loss=loss_curve(i), extra={"acc": i / 40}, dt=0.0))
    lines: list[Line] = [*events, checkpoint_line(events, len(events))]
    # A gap and a late event after the checkpoint: the state carries the gaps.
    c.seq += 2
    tail: list[Event] = [c.progress(epoch=2, step=5), c.metrics(loss=0.2, extra={"acc": 0.7})]
    late = Clock("ckpt", t=c.t, seq=c.seq - 3)
    tail.append(late.progress(epoch=2, step=3, dt=0.0))
    events += tail
    lines += tail
    lines.append(checkpoint_line(events, len(lines)))
    tail = [c.error("CUDA_OOM", "out of memory", dt=1.0), c.status("error", "failed")]
    events += tail
    lines += tail
    return Vector(
        "state_checkpoint",
        "state_checkpoint lines carry the fold so far; folding the whole log skips them, "
        "and the last one plus the lines after it folds to the same state",
        lines,
        c.t + 1.0,
    )


def nothing_decodable() -> Vector:
    return Vector(
        "nothing_decodable",
        "no line decodes: the projections of the empty state",
        [
            Raw(b"{}", "rejected", "an empty object"),
            Raw(b'{"type":"meta","training_id":"x","seq":1', "rejected", "torn", newline=False),
        ],
        T0,
    )


def json_text() -> Vector:
    c = Clock("json-text")
    env = lambda tag, **kw: envelope(c, tag, **kw)  # noqa: E731 - a local shorthand
    meta = c.meta(total_epochs=4)
    e = env("status", status="preparing")
    dup = orjson.dumps(e).replace(b'"status":"preparing"', b'"status":"idle","status":"preparing"')
    lines: list[Line] = [
        meta,
        Raw(dup, "ok", "duplicate key: the last value wins (status preparing)"),
        Raw(
            orjson.dumps(env("progress", epoch=1)).replace(b'"epoch":1', b'"epoch":-0'),
            "ok",
            "-0 is the integer 0",
        ),
        Raw(
            b" \t" + orjson.dumps(env("status", status="running", message="go")) + b" \r",
            "ok",
            "whitespace around the object, a CR before the LF",
        ),
        Raw(
            orjson.dumps(env("metrics", loss=1.0)).replace(
                b'"loss":1.0', b'"loss":99999999999999999999'
            ),
            "ok",
            "an integer literal beyond 2^64-1 is a number: fine for a number field",
        ),
        Raw(
            orjson.dumps(env("metrics", extra={"10": 1.0, "2": 2.0})).replace(
                b'"2":2.0}', b'"2":2.0,"10":3.0}'
            ),
            "ok",
            "integer-like keys keep their written order; a repeated key keeps its first place",
        ),
        Raw(
            orjson.dumps(env("status", status="running", message="x")).replace(
                b'"message":"x"', b'"message":"\\ud83d\\ude00 paired"'
            ),
            "ok",
            "a paired surrogate escape is one character",
        ),
        Raw(
            orjson.dumps(env("status", status="running", message="x")).replace(
                b'"message":"x"', b'"message":"\\ud800 lone"'
            ),
            "rejected",
            "a lone surrogate escape fails the line",
        ),
        Raw(
            orjson.dumps(env("progress", epoch=1)).replace(
                b'"epoch":1', b'"epoch":18446744073709551615'
            ),
            "ok",
            "2^64-1 is still an integer",
        ),
        Raw(b"\xef\xbb\xbf" + orjson.dumps(env("heartbeat")), "rejected", "a byte-order mark"),
        Raw(b"", "rejected", "an empty line"),
        Raw(
            b'{"type":"x-deep","d":'
            + b"[" * 1023
            + b"]" * 1023
            + b","
            + orjson.dumps(env("x-deep"))[1:].replace(b'"type":"x-deep",', b""),
            "ok",
            "1024 levels of nesting (the object and 1023 arrays)",
        ),
        Raw(
            b'{"type":"x-deep","d":'
            + b"[" * 1024
            + b"]" * 1024
            + b","
            + orjson.dumps(env("x-deep"))[1:].replace(b'"type":"x-deep",', b""),
            "rejected",
            "1025 levels of nesting",
        ),
        c.heartbeat(),
    ]
    return Vector(
        "json_text",
        "the JSON text decisions: duplicate keys, -0, whitespace, integer range, key "
        "order, surrogate escapes, BOM, empty line, nesting depth",
        lines,
        c.t + 1.0,
    )


def after_the_end() -> Vector:
    c = Clock("after-the-end")
    lines: list[Line] = [
        c.meta(total_epochs=2),
        c.status("running", "training"),
        c.status("done", "finished"),
        c.dropped(5, "late report of a sink"),
        c.progress(epoch=2),
        c.heartbeat(),
    ]
    return Vector(
        "after_the_end",
        "after done: a dropped event still counts (no anomaly), a progress event is "
        "after_terminal, a heartbeat is fine",
        lines,
        c.t + 1.0,
    )


def launch_failed() -> Vector:
    c = Clock("launch-failed")
    lines: list[Line] = [
        c.meta(total_epochs=3),
        c.error("LAUNCH_FAILED", "command not found", is_retryable=True),
        c.status("error", "could not start"),
    ]
    return Vector(
        "launch_failed",
        "idle straight to error: finished_at is set but the duration is null (it never ran)",
        lines,
        c.t + 60.0,
    )


def hostile_values() -> Vector:
    c = Clock("hostile-values")
    lines: list[Line] = [
        c.meta(flow_id="", flow_run_id="", flow_step_id="", total_epochs=-3, total_steps=0),
        c.status("running", "training"),
        c.progress(epoch=2, step=5, total_steps=10),
        Raw(
            encode(c.dropped(-4, "a negative count counts as 0")).rstrip(b"\n"),
            "nonconforming",
            "dropped.count below 0: decodes, counts as 0, the schema rejects it",
        ),
        Raw(
            orjson.dumps(envelope(c, "heartbeat")).replace(
                f'"timestamp":{c.t!r}'.encode(), b'"timestamp":1e300'
            ),
            "ok",
            "a timestamp far beyond year 9999: v1 timestamp null",
        ),
    ]
    return Vector(
        "hostile_values",
        "empty flow ids (flow null), total_epochs below 1 (fraction from steps alone), "
        "a negative dropped count, a timestamp outside years 1-9999",
        lines,
        T0 + 100.0,
    )


def many_gaps() -> Vector:
    c = Clock("many-gaps")
    lines: list[Line] = [c.status("running", "training")]
    for _ in range(20):
        c.seq += 1  # skip one seq: a gap of one
        lines.append(c.heartbeat(dt=1.0))
    late = Clock("many-gaps", t=c.t, seq=1)  # seq 2: in the first, forgotten gap
    lines.append(late.heartbeat(dt=1.0))
    lateish = Clock("many-gaps", t=c.t, seq=39)  # seq 40: in a gap still kept
    lines.append(lateish.heartbeat(dt=1.0))
    return Vector(
        "many_gaps",
        "20 gaps: only the newest 16 are kept, so a late event in the oldest counts as a "
        "duplicate and one in a kept gap as late_event",
        lines,
        c.t + 1.0,
    )


VECTOR_BUILDERS: tuple[Callable[[], Vector], ...] = (
    happy_run,
    skipped_preparing,
    error_run,
    error_recovered,
    cancelled_run,
    duplicates_and_late,
    coalesced_gaps,
    illegal_transitions,
    future_version,
    broken_lines,
    flow_linked,
    downsampled_metrics,
    exact_min_max,
    never_started,
    abandoned_run,
    foreign_event,
    state_checkpoint,
    nothing_decodable,
    json_text,
    after_the_end,
    launch_failed,
    hostile_values,
    many_gaps,
)


# --- computing the expected projections ----------------------------------------


def line_bytes(line: Line) -> bytes:
    """The bytes one line takes in the .jsonl file."""
    if isinstance(line, Raw):
        return line.data + (b"\n" if line.newline else b"")
    return encode(line)


def split_lines(data: bytes) -> list[bytes]:
    """Split a log into lines: at ``\\n``; a final unterminated piece is a (torn) line."""
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return pieces


def expected(vector: Vector, log: bytes) -> dict[str, Any]:
    """Compute a vector's expected results from its log bytes.

    Returns:
        ``v1``, ``view`` (at ``now``), ``history``, ``metric_history`` and
        ``live`` (liveness at ``now`` and the v1 snapshot and history record
        given it) of the replayed decodable lines; ``errors`` (how many lines
        failed to decode) and ``rejected_lines`` / ``nonconforming_lines``
        (1-based line numbers).
    """
    events: list[Event] = []
    rejected: list[int] = []
    for number, piece in enumerate(split_lines(log), start=1):
        try:
            events.append(decode(piece))
        except DecodeError:
            rejected.append(number)
    declared = [n for n, line in enumerate(vector.lines, 1) if _kind(line) == "rejected"]
    if declared != rejected:
        raise SystemExit(f"{vector.name}: lines {rejected} fail to decode, declared {declared}")
    state = replay(events)
    live = liveness_of(state, now=vector.now)
    return {
        "description": vector.description,
        "now": vector.now,
        "errors": len(rejected),
        "rejected_lines": rejected,
        "nonconforming_lines": [
            n for n, line in enumerate(vector.lines, 1) if _kind(line) == "nonconforming"
        ],
        "v1": to_v1(state),
        "view": to_view(state, now=vector.now),
        "history": to_history_record(state),
        "metric_history": to_metric_history(state),
        "live": {
            "liveness": live,
            "v1": to_v1(state, live),
            "history": to_history_record(state, live, vector.now),
        },
    }


def _kind(line: Line) -> LineKind:
    return line.kind if isinstance(line, Raw) else "ok"


def dump_json(value: Any) -> bytes:
    """JSON as the expected files hold it: sorted keys, indent 2, final newline."""
    return (json.dumps(value, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


# --- the generated sections of protocol.md -------------------------------------


def lifecycle_table() -> str:
    """The transition table, from :data:`pulse_core.lifecycle.TABLE`."""
    order = {status: index for index, status in enumerate(STATUSES)}
    rows = sorted(TABLE.items(), key=lambda item: (order[item[0][0]], order[item[1]]))
    out = [
        "| from state | trigger | to state (= the status the event names) |",
        "|---|---|---|",
    ]
    for (source, trigger), dest in rows:
        out.append(f"| `{source}` | `{trigger}` | `{dest}` |")
    return "\n".join(out)


def lifecycle_matrix() -> str:
    """Which status event is legal in which state, from :data:`TABLE`."""
    allowed = {(source, dest) for (source, _trigger), dest in TABLE.items()}
    out = [
        "| state \\ status event | " + " | ".join(f"`{s}`" for s in STATUSES) + " |",
        "|---|" + "---|" * len(STATUSES),
    ]
    for source in STATUSES:
        cells = ["yes" if (source, dest) in allowed else "-" for dest in STATUSES]
        out.append(f"| `{source}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def lifecycle_mermaid() -> str:
    """A mermaid state diagram, from :func:`pulse_core.lifecycle.build_machine`."""
    machine = build_machine()
    states = list(machine.states)
    edges: list[tuple[str, str, str]] = []
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                dest = transition.dest if transition.dest is not None else source
                edges.append((source, dest, trigger))
    edges.sort(key=lambda e: (states.index(e[0]), states.index(e[1])))
    sources = {source for source, _dest, _trigger in edges}
    out = ["```mermaid", "stateDiagram-v2", f"    [*] --> {machine.initial}"]
    out += [f"    {source} --> {dest}: {trigger}" for source, dest, trigger in edges]
    out += [f"    {state} --> [*]" for state in states if state not in sources]
    out.append("```")
    return "\n".join(out)


def lifecycle_section() -> str:
    """Everything between the lifecycle markers (without the markers)."""
    return "\n".join(
        [
            "<!-- Generated by specs/generate.py from pulse_core.lifecycle; do not edit. -->",
            "",
            lifecycle_mermaid(),
            "",
            "Every transition (`note` restates the current state with a new message):",
            "",
            lifecycle_table(),
            "",
            "The same rules as a matrix: may a run in the row's state apply a status "
            "event naming the column's status?",
            "",
            lifecycle_matrix(),
        ]
    )


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """Replace what lies between the *begin* and *end* marker lines of *text*."""
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"protocol.md lacks the markers {begin!r} ... {end!r}")
    return text[: start + len(begin)] + "\n" + body + "\n" + text[stop:]


# --- main ------------------------------------------------------------------------


def vectors() -> Iterator[Vector]:
    """Build every vector."""
    for build in VECTOR_BUILDERS:
        yield build()


def outputs() -> dict[Path, bytes]:
    """Every generated file and the bytes it must hold."""
    files: dict[Path, bytes] = {}
    for vector in vectors():
        log = b"".join(line_bytes(line) for line in vector.lines)
        files[VECTORS / f"{vector.name}.jsonl"] = log
        files[VECTORS / f"{vector.name}.expected.json"] = dump_json(expected(vector, log))
    files[CORPUS] = corpus.corpus()
    text = PROTOCOL.read_text(encoding="utf-8")
    files[PROTOCOL] = replace_between(
        text, BEGIN_LIFECYCLE, END_LIFECYCLE, lifecycle_section()
    ).encode("utf-8")
    return files


def stale(files: dict[Path, bytes]) -> list[Path]:
    """The generated files whose content on disk differs (or that are missing or extra)."""
    out = [path for path, data in files.items() if not path.exists() or path.read_bytes() != data]
    known = set(files)
    extra: Iterable[Path] = (
        path
        for path in sorted(VECTORS.glob("*"))
        if path.name.endswith((".jsonl", ".expected.json")) and path not in known
    )
    out.extend(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the generated files, or with ``--check`` report those out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything is out of date"
    )
    args = parser.parse_args(argv)
    files = outputs()
    if args.check:
        bad = stale(files)
        for path in bad:
            print(f"out of date: {path.relative_to(SPECS.parent)}", file=sys.stderr)
        if bad:
            print("run: python specs/generate.py", file=sys.stderr)
        return 1 if bad else 0
    VECTORS.mkdir(parents=True, exist_ok=True)
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(SPECS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
