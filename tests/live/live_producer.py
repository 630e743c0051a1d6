"""A real training process for the live tests, with the default configuration.

Run as ``python live_producer.py SCENARIO TRAINING_ID [ARGS...]`` in the home's
parent folder (the default home ``.pulse``) and with no ``PULSE_*`` variable
unless a test sets one. Scenarios:

* ``readme``: the README's loop (10 epochs of 100 steps), ``train_step``
  sleeping ARGS[0] seconds (default 0.005).
* ``forever``: progress and loss at 20 updates/s until killed; creates the
  file ARGS[0] after its first progress.
* ``bench N RATE OUT``: N progress updates at RATE per second, each after
  noting ``time.time()``; writes ``{step: sent_at}`` as JSON to OUT, then
  ends done.
* ``many N RATE SECONDS MARKER``: N runs in this one process (ids
  ``<TRAINING_ID>-<i>``), each reporting progress and loss RATE times a
  second for SECONDS; creates MARKER once all are running; all end done.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pulse_core import TrainingRun


def main() -> None:
    scenario, tid = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    if scenario == "readme":
        pause = float(args[0]) if args else 0.005

        def train_step() -> float:
            time.sleep(pause)
            return 1.0 / (1 + time.monotonic() % 7)

        with TrainingRun(tid, total_epochs=10) as run:
            run.status("running", "training")
            for epoch in range(1, 11):
                for step in range(100):
                    loss = train_step()
                    run.progress(epoch=epoch, step=step + 1, total_steps=100)
                    run.metrics(loss=loss)
    elif scenario == "forever":
        marker = Path(args[0])
        with TrainingRun(tid, total_epochs=1000) as run:
            run.status("running", "training")
            step = 0
            while True:
                step += 1
                run.progress(epoch=1 + step // 100, step=step % 100 + 1, total_steps=100)
                run.metrics(loss=1.0 / step)
                if step == 1:
                    marker.touch()
                time.sleep(0.05)
    elif scenario == "bench":
        count, rate, out = int(args[0]), float(args[1]), Path(args[2])
        sent: dict[int, float] = {}
        with TrainingRun(tid, name="latency probe", total_epochs=1, total_steps=count) as run:
            run.status("running", "probing")
            time.sleep(0.3)
            start = time.monotonic()
            for step in range(1, count + 1):
                time.sleep(max(0.0, start + step / rate - time.monotonic()))
                sent[step] = time.time()
                run.progress(epoch=1, step=step, total_steps=count)
            time.sleep(0.5)
            out.write_text(json.dumps(sent))
    elif scenario == "many":
        count, rate, seconds, marker = int(args[0]), float(args[1]), float(args[2]), args[3]
        runs = [TrainingRun(f"{tid}-{i}", total_epochs=1) for i in range(count)]
        for run in runs:
            run.__enter__()
            run.status("running", "training")
        Path(marker).touch()
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds:
            tick += 1
            time.sleep(max(0.0, start + tick / rate - time.monotonic()))
            for run in runs:
                run.progress(epoch=1, step=tick)
                run.metrics(loss=1.0 / tick)
        for run in runs:
            run.__exit__(None, None, None)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
