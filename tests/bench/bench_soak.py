"""Soak the hub: many concurrent runs with mixed endings, a hub crash, web clients (issue 21).

Run ``python tests/bench/bench_soak.py`` (about 3 minutes; ``--seconds`` and
``--slots`` scale it) or with ``--quick`` (about 40 s; what the smoke test
runs). ``--json PATH`` also writes the figures as JSON.

A real ``pulse serve --http`` process serves a fresh home. ``--slots`` (20)
slots each run training processes one after another: ``TrainingRun`` with
the default transports (file log, v1 file, socket to the hub) at 20 steps/s
with a status note every 2 s, ending in turn ``done``, with an exception, by
SIGKILL or by SIGINT (Ctrl-C) after 5-30 s (at most half the soak). Four
``/events`` clients read throughout (reconnecting with their last id, as a
browser does) and one never reads (a tiny receive buffer; the hub runs with
``--subscriber-limit`` 500 so that it is dropped within the soak; a new one
joins the restarted hub). At 40 % of the time the hub is SIGKILLed, stays
down ``--outage`` seconds and restarts on the same home, socket and port.

Reported: hub RSS and CPU over time; connection attempts per producer that
lived through the outage (goal: what the backoff allows, as in
bench_reconnect.py); the longest and the last SSE ``id`` (the cursor); when
the stuck client was closed; and truth mismatches -- each run's status and
liveness as ``/api/runs``, ``pulse ls`` and every ``/events`` client show
them at the end, against how the run really ended (goal 0).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from bench_hub import Hub
from bench_reconnect import allowed

sys.path.insert(0, str(Path(__file__).parents[1] / "truth"))
from truthkit import cli, free_port

from pulse_transports.hubtoken import read_token

#: status and liveness each ending must leave behind.
EXPECT: dict[str, tuple[str, str]] = {
    "done": ("done", "ended"),
    "error": ("error", "ended"),
    "sigint": ("cancelled", "ended"),
    "sigkill": ("running", "lost"),
}
ENDINGS = tuple(EXPECT)
MIB = 1024 * 1024


# -- the training process -------------------------------------------------------------


def producer(params: dict[str, Any]) -> None:
    """One run at 20 steps/s; counts its connection attempts into a file as they happen."""
    import pulse_transports._hubclient as socket_module  # where the sink connects
    from pulse_core.emitter import TrainingRun

    counter = Path(params["attempts"])
    calls = [0]
    real_connect = socket_module.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        counter.write_text(str(calls[0]))
        return real_connect(*args, **kwargs)

    socket_module.connect = counting_connect  # type: ignore[assignment]
    steps = params["steps"]
    with TrainingRun(params["tid"], name=f"soak {params['ending']}", total_steps=steps) as run:
        run.status("running", "training")
        print("ready", flush=True)
        for step in range(1, steps + 1):
            run.progress(epoch=1, step=step, total_steps=steps)
            run.metrics(loss=1.0 / step, accuracy=step / steps)
            if step % 40 == 0:
                run.status("running", f"note at step {step}")
            time.sleep(0.05)
        if params["ending"] == "error":
            raise RuntimeError("soak: a planned failure")


# -- readers ------------------------------------------------------------------------


class SseClient(threading.Thread):
    """An ``/events`` client folding status and liveness per run; reconnects with its last id."""

    def __init__(self, port: int, token: str | None, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self._stop = port, token, stop
        self.runs: dict[str, dict[str, str]] = {}
        self.last_id = ""
        self.longest_id = 0
        self.connects = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                self._stream()
            self._stop.wait(0.5)

    def _stream(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(
                "GET", "/events", headers=_auth(self.token, {"Last-Event-ID": self.last_id})
            )
            response = conn.getresponse()
            if response.status != 200:
                return
            self.connects += 1
            event_id, data = None, b""
            while not self._stop.is_set():
                try:
                    line = response.readline()
                except TimeoutError:
                    return  # keepalives come every 15 s: silence means a dead hub
                if not line:
                    return
                self.bytes += len(line)
                line = line.rstrip(b"\r\n")
                if line.startswith(b"id: "):
                    event_id = line[4:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
                elif not line and data:
                    self._fold(orjson.loads(data))
                    if event_id is not None:
                        self.last_id = event_id
                        self.longest_id = max(self.longest_id, len(event_id))
                    event_id, data = None, b""
        finally:
            conn.close()

    def _fold(self, items: list[Any]) -> None:
        with self.lock:
            for item in items:
                if "type" in item:
                    run = self.runs.setdefault(item["training_id"], {})
                    if item["type"] == "status":
                        run["status"] = item["status"]
                    ended = run.get("status") in ("done", "error", "cancelled")
                    run["liveness"] = "ended" if ended else "alive"
                elif "snapshot" in item:
                    for tid, view in item["snapshot"].items():
                        self.runs[tid] = {"status": view["status"], "liveness": view["liveness"]}
                elif "liveness" in item:
                    for tid, live in item["liveness"]["runs"].items():
                        self.runs.setdefault(tid, {})["liveness"] = live

    def state(self) -> dict[str, dict[str, str]]:
        with self.lock:
            return {tid: dict(run) for tid, run in self.runs.items()}


def _auth(token: str | None, headers: dict[str, str] | None = None) -> dict[str, str]:
    """*headers* with the hub's token (``<home>/hub.token``) as a Bearer."""
    out = dict(headers or {})
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def stuck_client(port: int, token: str | None) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    head = "".join(f"{k}: {v}\r\n" for k, v in _auth(token).items())
    sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    sock.setblocking(False)
    return sock


def closed(sock: socket.socket) -> bool:
    """True once the hub let go of *sock*'s connection.

    The client never reads, so a FIN from the hub waits behind the unread data
    and the client cannot see it: look at the hub's side instead -- no socket
    of the connection that a process still owns (an orphan's inode is 0).
    """
    port = sock.getsockname()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] != "0":
                return False  # the hub's end of it, still held by the hub
    return True


def api_runs(port: int, token: str | None) -> dict[str, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/runs?limit=1000", headers=_auth(token))
        rows = orjson.loads(conn.getresponse().read())["runs"]
    finally:
        conn.close()
    return {row["training_id"]: row for row in rows}


def ls_runs(home: Path) -> dict[str, dict[str, Any]]:
    result = cli("ls", "--json", "--home", str(home), "--limit", "10000", timeout=60)
    rows = orjson.loads(result.stdout)["runs"] if result.returncode == 0 else []
    return {row["training_id"]: row for row in rows}


# -- the soak -----------------------------------------------------------------------


class Soak:
    def __init__(self, seconds: float, slots: int, outage: float, subscriber_limit: int) -> None:
        self.seconds, self.slots, self.outage = seconds, slots, outage
        self.subscriber_limit = subscriber_limit
        self.scratch = Path(tempfile.mkdtemp(prefix="soak-"))
        self.home = self.scratch / "home"
        (self.home / "logs" / "training").mkdir(parents=True)
        (self.scratch / "attempts").mkdir()
        self.port = free_port()
        self.endings: dict[str, str] = {}
        self.spans: dict[str, tuple[float, float]] = {}
        self.rand = random.Random(21)
        self.lock = threading.Lock()
        self.hub: Hub | None = None
        self.samples: list[dict[str, float]] = []

    def start_hub(self) -> Hub:
        limit = self.subscriber_limit
        bounds = ["--subscriber-limit", str(limit), "--subscriber-buffer", str(max(1, limit // 2))]
        return Hub(self.home, "--http", f"127.0.0.1:{self.port}", *bounds)

    def slot(self, n: int, until: float) -> None:
        k = 0
        env = {**os.environ, "PULSE_HOME": str(self.home)}
        env.pop("PULSE_TRANSPORTS", None)
        while time.monotonic() < until:
            ending = ENDINGS[(n + k) % len(ENDINGS)]
            tid = f"soak-{n:02d}-{k:03d}"
            k += 1
            with self.lock:
                seconds = self.rand.uniform(5.0, min(30.0, self.seconds / 2))
            steps = int(seconds * 20) if ending in ("done", "error") else 1_000_000
            params = {
                "tid": tid,
                "ending": ending,
                "steps": steps,
                "attempts": str(self.scratch / "attempts" / tid),
            }
            proc = subprocess.Popen(
                [sys.executable, __file__, "--role", "producer", "--params", json.dumps(params)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                proc.wait(30)
                continue  # it never started its run: not counted
            started = time.monotonic()  # its run is open (and has tried the hub)
            with self.lock:
                self.endings[tid] = ending
            if ending == "sigkill" or ending == "sigint":
                time.sleep(seconds)
                proc.send_signal(signal.SIGKILL if ending == "sigkill" else signal.SIGINT)
            proc.wait(60)
            with self.lock:
                self.spans[tid] = (started, time.monotonic())

    def sample(self, stop: threading.Event, t0: float) -> None:
        last_cpu, last_t = None, None
        while not stop.wait(1.0):
            hub = self.hub
            if hub is None or hub.proc.poll() is not None:
                last_cpu = None
                continue
            try:
                rss, cpu = hub.rss(), hub.cpu_seconds()
            except OSError:
                continue
            now = time.monotonic()
            pct = 0.0 if last_cpu is None else 100 * (cpu - last_cpu) / max(1e-6, now - last_t)
            self.samples.append({"t": round(now - t0, 1), "rss_mib": rss / MIB, "cpu_pct": pct})
            last_cpu, last_t = cpu, now

    def run(self) -> dict[str, Any]:
        stop = threading.Event()
        t0 = time.monotonic()
        self.hub = self.start_hub()
        token = read_token(self.home)  # made by the hub at its start
        clients = [SseClient(self.port, token, stop) for _ in range(4)]
        for client in clients:
            client.start()
        stuck = [stuck_client(self.port, token)]  # one per hub
        closed_at: list[float | None] = [None]
        sampler = threading.Thread(target=self.sample, args=(stop, t0), daemon=True)
        sampler.start()
        until = t0 + self.seconds
        slots = [
            threading.Thread(target=self.slot, args=(n, until), daemon=True)
            for n in range(self.slots)
        ]
        for thread in slots:
            thread.start()
        crash_at = t0 + 0.4 * self.seconds
        outage: tuple[float, float] | None = None
        crashed = 0.0
        try:
            while any(thread.is_alive() for thread in slots):
                now = time.monotonic()
                for i, sock in enumerate(stuck):
                    if closed_at[i] is None and closed(sock):
                        closed_at[i] = now - t0
                # Mid-way, once most slots run (processes start slowly on a busy machine).
                if outage is None and now >= crash_at and len(self.endings) >= self.slots // 2:
                    os.killpg(self.hub.proc.pid, signal.SIGKILL)
                    self.hub.proc.wait()
                    self.hub.err.close()
                    down = time.monotonic()
                    time.sleep(self.outage)
                    self.hub = self.start_hub()
                    outage = (down, time.monotonic())
                    crashed = down - t0
                    stuck.append(stuck_client(self.port, read_token(self.home)))
                    closed_at.append(None)
                time.sleep(0.2)
            time.sleep(4.0)  # liveness checks, last events, SSE delivery
            for i, sock in enumerate(stuck):
                if closed_at[i] is None and closed(sock):
                    closed_at[i] = time.monotonic() - t0
            figures = self.judge(clients, outage)
        finally:
            stop.set()
            for sock in stuck:
                sock.close()
            if self.hub is not None:
                self.hub.stop()
            shutil.rmtree(self.scratch, ignore_errors=True)
        # The first hub's stuck client: dropped before the crash (or by it); the second's.
        figures["stuck_closed_at_s"] = [None if c is None else round(c, 1) for c in closed_at]
        figures["crash_at_s"] = round(crashed, 1) if outage is not None else None
        figures["seconds"] = round(time.monotonic() - t0, 1)
        figures["slots"] = self.slots
        figures["rss_mib"] = _series(self.samples, "rss_mib")
        figures["cpu_pct"] = _series(self.samples, "cpu_pct")
        return figures

    def judge(self, clients: list[SseClient], outage: tuple[float, float] | None) -> dict[str, Any]:
        api = api_runs(self.port, read_token(self.home))
        ls = ls_runs(self.home)
        readers: dict[str, dict[str, dict[str, Any]]] = {"api": api, "ls": ls}
        for i, client in enumerate(clients):
            readers[f"sse{i}"] = client.state()  # type: ignore[assignment]
        mismatches: list[str] = []
        for tid, ending in sorted(self.endings.items()):
            want = EXPECT[ending]
            for name, rows in readers.items():
                row = rows.get(tid)
                got = (row.get("status"), row.get("liveness")) if row else None
                if got != want:
                    mismatches.append(f"{name} {tid} ({ending}): expected {want}, got {got}")
        attempts: list[int] = []
        if outage is not None:
            for tid, (start, end) in self.spans.items():
                if start < outage[0] and end > outage[1] + 2.5:
                    path = self.scratch / "attempts" / tid
                    try:
                        # The first connection is no retry: count what followed it.
                        attempts.append(int(path.read_text()) - 1)
                    except (OSError, ValueError):
                        continue
        counts = {e: sum(1 for v in self.endings.values() if v == e) for e in ENDINGS}
        return {
            "runs": len(self.endings),
            "endings": counts,
            "outage_s": None if outage is None else round(outage[1] - outage[0], 1),
            "attempts_per_producer": sorted(attempts),
            "attempts_goal": allowed(outage[1] - outage[0]) if outage else None,
            "cursor_longest": max(c.longest_id for c in clients),
            "cursor_last": [len(c.last_id) for c in clients],
            "sse_connects": [c.connects for c in clients],
            "sse_kib": [round(c.bytes / 1024) for c in clients],
            "mismatches": len(mismatches),
            "mismatch_examples": mismatches[:10],
        }


def _series(samples: list[dict[str, float]], key: str) -> dict[str, Any]:
    values = [s[key] for s in samples]
    if not values:
        return {}
    step = max(1, len(samples) // 12)
    return {
        "max": round(max(values), 1),
        "last": round(values[-1], 1),
        "every": [(s["t"], round(s[key], 1)) for s in samples[::step]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="about 40 s (the smoke test)")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long runs start")
    parser.add_argument("--slots", type=int, default=20, help="concurrent training processes")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the hub is down")
    parser.add_argument(
        "--subscriber-limit",
        type=int,
        default=500,
        help="the hub's --subscriber-limit (its default, 10,000, drops the stuck client "
        "only after about 17 minutes at this load)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "producer":
        producer(json.loads(args.params))
        return 0
    if args.quick:
        args.seconds, args.slots, args.outage = 20.0, 4, 3.0
        args.subscriber_limit = 200
    f = Soak(args.seconds, args.slots, args.outage, args.subscriber_limit).run()
    print(
        f"soak: {f['runs']} runs {f['endings']} in {f['seconds']} s, {f['slots']} at a time; "
        f"hub down {f['outage_s']} s"
    )
    print(f"hub RSS MiB: max {f['rss_mib'].get('max')}, over time {f['rss_mib'].get('every')}")
    print(f"hub CPU %: max {f['cpu_pct'].get('max')}, over time {f['cpu_pct'].get('every')}")
    print(
        f"reconnect attempts per producer through the outage: {f['attempts_per_producer']} "
        f"(goal <= {f['attempts_goal']})"
    )
    print(
        f"SSE cursor: longest {f['cursor_longest']} chars, last {f['cursor_last']}; "
        f"connects {f['sse_connects']}, KiB read {f['sse_kib']}; "
        f"stuck clients (one per hub) closed at {f['stuck_closed_at_s']} s "
        f"(the hub crashed at {f['crash_at_s']} s)"
    )
    print(f"truth mismatches: {f['mismatches']} (goal 0) {f['mismatch_examples']}")
    if args.json is not None:
        args.json.write_text(json.dumps(f, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
