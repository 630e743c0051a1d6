"""A training process reporting to NATS, for the multi-process tests.

Usage: ``python producer.py URL TRAINING_ID STEPS [SLEEP] [NOTE_EVERY] [ERROR_EVERY]``.
Each step reports progress and metrics; every NOTE_EVERY steps it restates
``running`` with the message ``note <n>``, every ERROR_EVERY steps it reports
a non-fatal error ``NOTE_ERROR`` with message ``error <n>``; it ends ``done``.
Prints one JSON line of the sink's counters at the end.
"""

from __future__ import annotations

import json
import sys
import time

from pulse_core.emitter import TrainingRun
from pulse_transports.nats import NatsSink


def main() -> None:
    url, tid, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
    note_every = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    error_every = int(sys.argv[6]) if len(sys.argv) > 6 else 25
    sink = NatsSink(url=url, close_timeout=20.0, interval=0.02)
    with TrainingRun(tid, sinks=[sink], total_steps=steps, heartbeat_interval=0.5) as run:
        print("started", flush=True)
        for step in range(1, steps + 1):
            run.progress(epoch=1, step=step)
            run.metrics(loss=1.0 / step)
            if step % note_every == 0:
                run.status("running", f"note {step // note_every}")
            if step % error_every == 0:
                run.error("NOTE_ERROR", f"error {step // error_every}", fatal=False)
            time.sleep(pause)
    print(json.dumps(sink.stats()), flush=True)


if __name__ == "__main__":
    main()
