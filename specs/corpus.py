"""The generated differential corpus: random logs and what pulse_core makes of them.

Imported by ``generate.py`` (which writes ``corpus/differential.jsonl`` and
checks it with ``--check``). Deterministic: one fixed seed, no clock. Each log
mixes drops, duplicates, swaps, foreign ids, unknown types and statuses,
odd values, and bad or edge-case JSON lines; each is evaluated at several
``now`` values.

One JSON object per line of ``differential.jsonl``:

* ``name``; ``lines``: the log's lines, each a string (its UTF-8 text) or
  ``{"base64": ...}`` for bytes that are not UTF-8; ``final_newline``: whether
  the log ends with ``\\n`` (otherwise the last line is unterminated).
* ``rejected_lines``: 1-based numbers of the lines that fail to decode.
* ``v1``, ``history``, ``metric_history``: without liveness or ``now``.
* ``cases``: per ``now``: ``now``, ``liveness``, the ``view`` at ``now`` (for
  the second and later cases as ``view_changes``: the top-level keys whose
  value differs from the first case's view, to keep the file small), and
  ``v1`` and ``history`` given that liveness and ``now``.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import orjson

from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.liveness import liveness_of
from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
from pulse_core.reducer import replay

SEED = 20261206
COUNT = 520
STATUSES = ["idle", "preparing", "running", "cooling_down", "done", "error", "cancelled"]
BASE = 1767225600.0


def _ev(r: random.Random, tid: str, seq: int, ts: float) -> dict[str, Any]:
    """One random event object (as a writer or a hostile writer might send it)."""
    kind = r.choices(
        ["status", "progress", "metrics", "error", "heartbeat", "dropped", "meta", "unknown"],
        [22, 18, 26, 6, 8, 4, 6, 3],
    )[0]
    o: dict[str, Any] = {"type": kind, "training_id": tid, "seq": seq, "timestamp": ts, "v": 2}
    if kind == "status":
        o["status"] = r.choice([*STATUSES, "running", "running", "done", "paused"])
        if r.random() < 0.7:
            o["message"] = r.choice(["", "go", "epoch done", "ünïcode ✓", "x" * 30])
    elif kind == "progress":
        for f in ("epoch", "total_epochs", "step", "total_steps"):
            if r.random() < 0.6:
                o[f] = r.choice([r.randint(0, 20), r.randint(0, 20), -3, 0, None, 2**40])
    elif kind == "metrics":
        for f in ("loss", "time_per_epoch", "samples_per_second", "tokens_per_second"):
            if r.random() < 0.5:
                o[f] = r.choice([round(r.uniform(0, 5), 3), r.randint(0, 9), None, -0.0, 1e-300])
        if r.random() < 0.5:
            width = r.choices([1, 3, 8, 70], [40, 40, 17, 3])[0]
            o["extra"] = {
                r.choice(["acc", "lr", "10", "2", "__proto__", "m"])
                + str(r.randint(0, width)): round(r.uniform(-1, 1), 4)
                for _ in range(r.randint(1, width) if width < 70 else 70)
            }
        if r.random() < 0.2:
            o["min"] = {"loss": round(r.uniform(-1, 1), 3), "acc1": 0.5}
            o["max"] = {"loss": round(r.uniform(2, 9), 3), "nope": 1}
        if r.random() < 0.1:
            o["names_dropped"] = r.choice([0, 3, 2**63 + 5])
    elif kind == "error":
        o["error_code"] = r.choice(["CUDA_OOM", "DATASET_NOT_FOUND", "lower_case"])
        o["message"] = r.choice(["boom", "", "bad ✗"])
        if r.random() < 0.5:
            o["is_retryable"] = r.random() < 0.5
        if r.random() < 0.4:
            o["details"] = r.choice([{}, {"a": [1, 2.5, None]}, {"10": 1, "2": {"x": "y"}}, None])
        if r.random() < 0.3:
            o["epoch"] = r.randint(0, 5)
    elif kind == "dropped":
        o["count"] = r.choice([0, 1, 7, -4, 2**62, 2**63 - 1])
        if r.random() < 0.5:
            o["reason"] = "buffer full"
    elif kind == "meta":
        for f, vals in (
            ("name", ["run", "", None]),
            ("flow_id", ["flow-a", "", None]),
            ("flow_run_id", ["fr-1", "", None]),
            ("flow_step_id", ["train", "", None]),
            ("attempt", [1, 2, None]),
            ("total_epochs", [3, 10, 0, -3, None]),
            ("total_steps", [50, 0, None]),
            ("pid", [4242, None]),
            ("host", ["gpu-1", None]),
            ("world_size", [1, 8, None]),
        ):
            if r.random() < 0.5:
                o[f] = r.choice(vals)
        if r.random() < 0.3:
            o["labels"] = {"team": "ml", "9": "nine"}
    else:
        o["type"] = r.choice(["checkpoint", "x.y", "paused"])
        o["payload"] = {"k": [1, 2, 3]}
    return o


def _edge_line(r: random.Random, tid: str, seq: int, ts: float) -> bytes:
    """A hand-shaped line: bad, or valid JSON at an edge of the rules."""
    env = f'"training_id":"{tid}","seq":{seq},"timestamp":{ts!r},"v":2'
    if r.random() < 0.02:  # nesting: 1024 levels decode, 1025 do not
        depth = r.choice([1024, 1025])
        return ('{"type":"x-deep","d":' + "[" * depth + "]" * depth + "," + env + "}").encode()
    return r.choice(
        [
            b"\xff\xfe not utf-8",
            b'{"type":"status","status":"running",' + env.encode() + b',"message":"\xed\xa0\x80"}',
            b"",
            b"   ",
            b"not json",
            b"[1,2,3]",
            b"null",
            b'{"type":"heartbeat",' + env.encode() + b"",  # torn
            ("\ufeff{" + '"type":"heartbeat",' + env + "}").encode(),
            (" \t{" + '"type":"heartbeat",' + env + "} \r").encode(),
            ('{"type":"progress","epoch":-0,' + env + "}").encode(),
            ('{"type":"progress","epoch":3.0,' + env + "}").encode(),
            ('{"type":"progress","epoch":"3",' + env + "}").encode(),
            ('{"type":"progress","epoch":true,' + env + "}").encode(),
            ('{"type":"progress","epoch":18446744073709551615,' + env + "}").encode(),
            ('{"type":"progress","epoch":18446744073709551616,' + env + "}").encode(),
            ('{"type":"progress","epoch":-9223372036854775808,' + env + "}").encode(),
            ('{"type":"progress","epoch":-9223372036854775809,' + env + "}").encode(),
            ('{"type":"x-future","big":99999999999999999999,' + env + "}").encode(),
            ('{"type":"metrics","loss":1e400,' + env + "}").encode(),
            ('{"type":"metrics","loss":99999999999999999999,' + env + "}").encode(),
            ('{"type":"metrics","loss":1' + "0" * 400 + "," + env + "}").encode(),
            ('{"type":"metrics","loss":0.' + "0" * 400 + "1," + env + "}").encode(),
            ('{"type":"metrics","loss":1E-400,' + env + "}").encode(),
            ('{"type":"metrics","loss":2.5e1,' + env + "}").encode(),
            ('{"type":"metrics","extra":{"a":null},' + env + "}").encode(),
            ('{"type":"metrics","extra":{"a":true},' + env + "}").encode(),
            ('{"type":"metrics","extra":{"b":1,"a":2,"b":3},' + env + "}").encode(),
            ('{"type":"status","status":"running","status":"done",' + env + "}").encode(),
            ('{"type":"status","status":"preparing","message":"\\ud800",' + env + "}").encode(),
            ('{"type":"status","status":"preparing","message":"\\udc00x",' + env + "}").encode(),
            (
                '{"type":"status","status":"preparing","message":"\\ud83d\\ude00",' + env + "}"
            ).encode(),
            ('{"type":"status","status":"preparing","message":"a\u0001",' + env + "}").encode(),
            ('{"type":"status","status":"preparing","message":null,' + env + "}").encode(),
            ('{"type":"status",' + env + "}").encode(),
            (
                '{"type":"error","error_code":"X","message":"m","is_retryable":null,' + env + "}"
            ).encode(),
            ('{"type":"error","error_code":"X","message":"m","details":[1],' + env + "}").encode(),
            ('{"type":"meta","labels":null,' + env + "}").encode(),
            ('{"type":"meta","labels":{"a":1},' + env + "}").encode(),
            ('{"type":"meta","name":null,"flow_id":"",' + env + "}").encode(),
            ('{"type":"",' + env + "}").encode(),
            ('{"type":5,' + env + "}").encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":{ts!r},"v":1}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":{ts!r},"v":3}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":{ts!r}}}'.encode(),
            f'{{"type":"heartbeat","training_id":"../x","seq":{seq},"timestamp":{ts!r},"v":2}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}\\n","seq":{seq},"timestamp":{ts!r},"v":2}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq}.0,"timestamp":{ts!r},"v":2}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":"{ts!r}","v":2}}'.encode(),
            f'{{"type":"x-new","training_id":"{tid}","timestamp":{ts!r},"v":2}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":1e300,"v":2}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":-62135596801,"v":2}}'.encode(),
            f'{{"type":"heartbeat","training_id":"{tid}","seq":{seq},"timestamp":253402300800,"v":2}}'.encode(),
            ('{"type":"heartbeat",' + env.replace(f"{ts!r}", f"{ts + 0.0005!r}") + "}").encode(),
            ('{"type":"heartbeat",' + env + "} x").encode(),
        ]
    )


def _log(r: random.Random, index: int) -> tuple[list[bytes], bool]:
    tid = f"run-{index}" if r.random() < 0.9 else r.choice(["a", "A.b_c-9", "x" * 128, "0"])
    n = r.randint(0, 30)
    ts = BASE + r.randint(0, 10**6) + r.choice([0.0, 0.25, 0.125])
    objs: list[dict[str, Any]] = []
    if r.random() < 0.7:
        objs.append(
            {
                "type": "meta",
                "training_id": tid,
                "seq": 1,
                "timestamp": ts,
                "v": 2,
                "total_epochs": r.choice([3, 5, 0]),
            }
        )
    for seq in range(len(objs) + 1, n + 1):
        ts += r.choice([0.0, 0.5, 1.0, 1.0, 2.0, 30.0, -3.0])
        objs.append(_ev(r, tid, seq, ts))
    if r.random() < 0.3:  # a clean start so lifecycles get somewhere
        for o, s in zip(objs[1:4], ("preparing", "running", "running"), strict=False):
            o.update(type="status", status=s)
    # transport damage
    out: list[dict[str, Any]] = []
    for o in objs:
        x = r.random()
        if x < 0.08:
            continue  # dropped
        out.append(o)
        if x < 0.14:
            out.append(dict(o))  # duplicate
    for _ in range(r.randint(0, 3)):
        if len(out) > 2:
            i = r.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
    for o in out:
        y = r.random()
        if y < 0.03:
            o["training_id"] = "other-run"
        elif y < 0.05:
            o["seq"] = r.choice([0, -1])
        elif y < 0.055:
            o["seq"] = 2**63 + r.randint(0, 3)
    lines = [orjson.dumps(o) for o in out]
    for _ in range(r.choice([0, 0, 1, 2, 4])):
        seq = r.randint(1, n + 2)
        lines.insert(r.randint(0, len(lines)), _edge_line(r, tid, seq, ts + r.random()))
    return lines, r.random() < 0.9


def _text(line: bytes) -> Any:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(line).decode("ascii")}


def case(name: str, lines: list[bytes], final_newline: bool) -> dict[str, Any]:
    """What pulse_core computes from one log."""
    events = []
    rejected = []
    for number, line in enumerate(lines, start=1):
        try:
            events.append(decode(line))
        except DecodeError:
            rejected.append(number)
    state = replay(events)
    last = state.last_event_at if state.last_event_at is not None else BASE
    cases = []
    first: dict[str, Any] | None = None
    for offset in (1.0, 45.5, 3600.0):
        now = last + offset
        live = liveness_of(state, now=now)
        view = to_view(state, now=now)
        item: dict[str, Any] = {"now": now, "liveness": live}
        if first is None:
            first = item["view"] = view
        else:  # only the top-level keys that differ from the first case's view
            item["view_changes"] = {k: v for k, v in view.items() if v != first[k]}
        item["v1"] = to_v1(state, live)
        item["history"] = to_history_record(state, live, now)
        cases.append(item)
    return {
        "name": name,
        "lines": [_text(line) for line in lines],
        "final_newline": final_newline,
        "rejected_lines": rejected,
        "v1": to_v1(state),
        "history": to_history_record(state),
        "metric_history": to_metric_history(state),
        "cases": cases,
    }


def corpus() -> bytes:
    """The whole corpus file."""
    r = random.Random(SEED)  # noqa: S311 - a fixed seed for a reproducible corpus, not secrets
    out = []
    for index in range(COUNT):
        lines, final_newline = _log(r, index)
        if not final_newline and (not lines or lines[-1] == b""):
            final_newline = True  # an unterminated empty final piece is no line at all
        out.append(orjson.dumps(case(f"random-{index:03d}", lines, final_newline)) + b"\n")
    return b"".join(out)
