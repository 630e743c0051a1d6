"""What run ownership and the token cost a producer's hello, on a real ``pulse serve``.

What is measured: a real hub process (``--tcp`` with its default token), a
writer process holding run ``owned``'s lock (``FileSink``) and an intruder
process beside it (neither descends from the other). Round trips from
connect to the hub's first line, per case:

* ``welcome, no lock``: a producer hello for a fresh run (the lock-less rule);
* ``welcome, lock holder``: the writer itself reconnecting (lock + peer pid);
* ``refused, intruder``: the intruder asking for the writer's run: refused
  ``run_owned`` (the process-tree walk);
* ``welcome, tcp + token``: a fresh run over TCP with the home's token.

Usage::

    python tests/bench/bench_hub_owner.py [--samples 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pulse_transports.hubtoken import read_token
from pulse_transports.wire import Address, LineReader, connect, hello_line

#: ``python -c CLIENT HOME N lock|intrude``: N hellos for run ``owned``; the round trips as JSON.
CLIENT = """
import sys, time, json
from pathlib import Path
from pulse_transports.file import FileSink
from pulse_transports.wire import Address, LineReader, connect, hello_line
home, n, role = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if role == "lock":
    writer = FileSink(home=home)
    writer.open("owned")
    print("locked", flush=True)
    sys.stdin.readline()  # the intruder's turn comes first
times = []
for _ in range(n):
    t = time.perf_counter()
    s = connect(Address(path=home / "pulse.sock"), 10)
    s.sendall(hello_line("producer", training_id="owned"))
    line = LineReader(s, 1 << 20).readline(10)
    times.append(time.perf_counter() - t)
    wanted = b"welcome" if role == "lock" else b"run_owned"
    assert line is not None and wanted in line, line
    s.close()
print(json.dumps(times), flush=True)
"""


def round_trip(address: Address, tid: str, token: str | None = None) -> float:
    start = time.perf_counter()
    sock = connect(address, 10)
    try:
        sock.sendall(hello_line("producer", training_id=tid, token=token))
        line = LineReader(sock, 1 << 20).readline(10)
        assert line is not None
        assert b"welcome" in line, line
        return time.perf_counter() - start
    finally:
        sock.close()


def figures(name: str, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    row = {
        "case": name,
        "samples": len(ordered),
        "p50_ms": round(pct(0.5), 3),
        "p99_ms": round(pct(0.99), 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }
    print(f"{name:24} p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms  (n={len(ordered)})")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bo-"))
    home = root / "home"
    out = root / "hub.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    cmd = [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(home)]
    with out.open("wb") as sink:
        hub = subprocess.Popen(
            [*cmd, "--tcp", "127.0.0.1:0"], stdout=sink, stderr=subprocess.DEVNULL, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in out.read_text():
            if hub.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the hub did not start: {out.read_text()}")
            time.sleep(0.05)
        words = out.read_text().split("listening on", 1)[1].split()
        port = int(next(w for w in words if w.startswith("tcp:")).rsplit(":", 1)[1])
        unix = Address(path=home / "pulse.sock")
        tcp = Address(host="127.0.0.1", port=port)
        token = read_token(home)
        n = args.samples
        rows = [figures("welcome, no lock", [round_trip(unix, f"free-{i}") for i in range(n)])]
        client = [sys.executable, "-c", CLIENT, str(home), str(n)]
        writer = subprocess.Popen(
            [*client, "lock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdin is not None
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "locked"
        intruder = subprocess.run(
            [*client, "intrude"], capture_output=True, text=True, timeout=300, check=True
        )
        writer.stdin.write("go\n")
        writer.stdin.flush()
        rows.append(figures("welcome, lock holder", json.loads(writer.stdout.readline())))
        writer.stdin.close()
        writer.wait(30)
        rows.append(figures("refused, intruder", json.loads(intruder.stdout)))
        rows.append(
            figures("welcome, tcp + token", [round_trip(tcp, f"tcp-{i}", token) for i in range(n)])
        )
    finally:
        hub.terminate()
        hub.wait(10)
    if args.json is not None:
        args.json.write_text(json.dumps({"hello": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
