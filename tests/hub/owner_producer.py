"""A producer process the ownership tests drive line by line over stdin.

``python owner_producer.py HOME TID [lock]`` -- with ``lock`` it first takes
the run's lock as a writer does (a real ``FileSink``). Then it reads
commands, one per line, and prints one JSON line per command:

* ``connect NAME unix`` / ``connect NAME tcp:PORT[:TOKEN]`` -- open a
  connection called NAME and send the producer hello; prints the hub's reply;
* ``send NAME SEQ [STATUS]`` -- send an event (progress, or a status);
  prints ``{"sent": SEQ}``;
* ``read NAME`` -- prints the next line the hub sent on NAME (or a timeout);
* ``quit``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pulse_core.codec import encode
from pulse_core.events import Progress, StatusChanged
from pulse_transports.file import FileSink
from pulse_transports.wire import Address, LineReader, connect, hello_line


def main() -> None:
    home, tid = Path(sys.argv[1]), sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3] == "lock":
        sink = FileSink(home=home)
        sink.open(tid)
    conns: dict[str, tuple[Any, LineReader]] = {}

    def say(obj: Any) -> None:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")
        sys.stdout.flush()

    say({"ready": True})
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        if words[0] == "quit":
            return
        if words[0] == "connect":
            name, where = words[1], words[2]
            token = None
            if where == "unix":
                address = Address(path=home / "pulse.sock")
            else:
                parts = where.split(":")
                address = Address(host="127.0.0.1", port=int(parts[1]))
                token = parts[2] if len(parts) > 2 else None
            sock = connect(address, 10.0)
            sock.sendall(hello_line("producer", training_id=tid, token=token))
            reader = LineReader(sock, 1 << 20)
            conns[name] = (sock, reader)
            line = reader.readline(10.0)
            say(orjson.loads(line) if line else {"timeout": True})
        elif words[0] == "send":
            sock, _ = conns[words[1]]
            seq = int(words[2])
            now = time.time()
            if len(words) > 3:
                event: Any = StatusChanged(
                    training_id=tid, seq=seq, timestamp=now, status=words[3], message="x"
                )
            else:
                event = Progress(training_id=tid, seq=seq, timestamp=now, step=seq)
            try:
                sock.sendall(encode(event))
                say({"sent": seq})
            except OSError as exc:
                say({"send_failed": str(exc)})
        elif words[0] == "read":
            _, reader = conns[words[1]]
            try:
                line = reader.readline(float(words[2]) if len(words) > 2 else 10.0)
            except (EOFError, OSError) as exc:
                say({"closed": str(exc)})
                continue
            say(orjson.loads(line) if line else {"timeout": True})


if __name__ == "__main__":
    main()
