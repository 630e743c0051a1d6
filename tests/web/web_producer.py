"""A real training process for the web tests: one ``TrainingRun`` reporting a scenario.

Run as ``python web_producer.py SCENARIO TRAINING_ID CONTROL_DIR [ARGS...]`` with
``PULSE_HOME`` and ``PULSE_TRANSPORTS=file,socket`` set (the lifecycle, error
and forever scenarios take the run's name as an optional argument). It waits at each
``gate(n)`` until the test creates ``CONTROL_DIR/<n>``, so a test sees every
state for as long as it needs, without sleeping. Scenarios:

* ``lifecycle [NAME]``: (NAME ``-``: no name) preparing, (gate 1) running with progress, (gate 2)
  cooling_down, (gate 3) done.
* ``error``: a few steps, then a fatal ``DATASET_NOT_FOUND`` error with details.
* ``forever``: progress and loss at 20 updates/s until killed.
* ``until``: progress at 20 updates/s until gate 1, then a status note and done.
* ``escape``: names, messages, details, flow ids and a metric name holding markup.
* ``showcase``: a realistic run for the screenshot: a flow link, a falling
  loss curve, throughput and a learning rate, until killed.
* ``flow FLOW_RUN_ID [PAUSE]``: a flow run of two TRAIN steps through
  :class:`~pulse_transports.flows.FlowTrainer` (in-process steps):
  ``pretrain`` succeeds; ``finetune`` fails with a CUDA out-of-memory
  exception (a traceback in its details), is retried and succeeds. PAUSE
  (default 0.01) is the time per training step, 24 steps a run.
* ``bench N RATE OUT``: N progress updates at RATE per second, each after
  noting ``time.time()``; writes ``{step: sent_at}`` as JSON to OUT, waits
  for gate 1, then ends done.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from pulse_core import TrainingRun

MARKUP = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def main() -> None:
    scenario, tid, control = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    args = sys.argv[4:]

    def gate(n: int) -> None:
        while not (control / str(n)).exists():
            time.sleep(0.01)

    if scenario == "lifecycle":
        name: str | None = args[0] if args else "lifecycle run"
        name = None if name == "-" else name  # "-": a run without a name
        with TrainingRun(tid, name=name, total_epochs=2, total_steps=10) as run:
            run.status("preparing", "loading data")
            gate(1)
            for step in range(1, 6):
                run.progress(epoch=1, step=step, total_steps=10)
                run.metrics(loss=1.0 / step)
                time.sleep(0.02)
            gate(2)
            run.progress(epoch=2, step=10, total_steps=10)
            run.status("cooling_down", "saving the checkpoint")
            gate(3)
    elif scenario == "error":
        name = args[0] if args else "error run"
        with TrainingRun(
            tid, name=name, flow_id="flow-7", flow_run_id="fr-42", flow_step_id="train"
        ) as run:
            run.progress(epoch=1, total_epochs=3, step=4, total_steps=10)
            run.metrics(loss=0.5)
            time.sleep(0.2)
            run.error(
                "DATASET_NOT_FOUND",
                "no dataset at /data/train.csv",
                is_retryable=True,
                details={"path": "/data/train.csv", "hint": "mount the data volume"},
            )
            gate(1)
    elif scenario in ("forever", "until"):
        name = args[0] if args else f"{scenario} run"
        with TrainingRun(tid, name=name, total_epochs=1000, total_steps=100) as run:
            i = 0
            while scenario == "forever" or not (control / "1").exists():
                i += 1
                run.progress(epoch=1 + i // 100, step=i % 100 + 1, total_steps=100)
                run.metrics(loss=1.0 + math.sin(i / 10) / 2)
                time.sleep(0.05)
            run.status("running", "finishing after the restart")
    elif scenario == "escape":
        with TrainingRun(
            tid, name=MARKUP, flow_id=MARKUP, flow_run_id="<b>flow-run</b>", flow_step_id=MARKUP
        ) as run:
            run.status("running", MARKUP)
            run.metrics(loss=0.25, **{"<i>metric</i>": 1.5})
            run.error(
                "UNHANDLED_EXCEPTION",
                MARKUP,
                details={"html": MARKUP, "trace": "<pre>x</pre>"},
                fatal=False,
            )
            gate(1)
    elif scenario == "showcase":
        with TrainingRun(
            tid,
            name="resnet50 fine-tune (imagenet-subset)",
            total_epochs=10,
            total_steps=200,
            flow_id="nightly-vision",
            flow_run_id="run-2026-11-29",
            flow_step_id="train",
            attempt=1,
        ) as run:
            run.status("preparing", "loading 12,800 images")
            time.sleep(0.4)
            i = 0
            while True:
                i += 1
                epoch, step = 3 + i // 200, i % 200 + 1
                run.progress(epoch=epoch, step=step, total_steps=200)
                wobble = 0.04 * math.sin(i / 3) + 0.02 * math.sin(i * 1.7)
                run.metrics(
                    loss=0.35 + 1.6 * math.exp(-i / 35) + wobble,
                    samples_per_second=1843.0 + 20 * math.sin(i / 7),
                    lr=3e-4,
                )
                time.sleep(0.05)
    elif scenario == "flow":
        flow_scenario(tid, float(args[0]) if args else 0.01)
    elif scenario == "bench":
        count, rate, out = int(args[0]), float(args[1]), Path(args[2])
        sent: dict[int, float] = {}
        with TrainingRun(tid, name="latency probe", total_epochs=1, total_steps=count) as run:
            gate(1)
            start = time.monotonic()
            for step in range(1, count + 1):
                # Paced against the start, not the last call: the rate holds on average.
                time.sleep(max(0.0, start + step / rate - time.monotonic()))
                sent[step] = time.time()
                run.progress(epoch=1, step=step, total_steps=count)
            out.write_text(json.dumps(sent))
            gate(2)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


def flow_scenario(flow_run_id: str, pause: float) -> None:
    """Two TRAIN steps of one flow run, the second retried after an error."""
    from pulse_transports.flows import FlowTrainer

    trainer = FlowTrainer()

    def train(start: float, floor: float, fail_at: int | None = None) -> Any:
        def target(run: TrainingRun) -> None:
            run.status("preparing", "loading the dataset")
            time.sleep(pause * 4)
            run.status("running", "training")
            for epoch in range(1, 4):
                for step in range(1, 9):
                    i = (epoch - 1) * 8 + step
                    if fail_at is not None and i == fail_at:
                        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                    run.progress(epoch=epoch, step=step, total_steps=8)
                    loss = floor + (start - floor) * math.exp(-i / 8) + 0.01 * math.sin(i)
                    run.metrics(loss=loss, samples_per_second=1800.0 + 15 * math.sin(i / 3))
                    time.sleep(pause)
            run.status("cooling_down", "saving the checkpoint")

        return target

    common = {"flow_id": "nightly-vision", "flow_run_id": flow_run_id, "total_epochs": 3}
    first = trainer.start_callable(
        train(2.3, 0.9), flow_step_id="pretrain", name="pretrain resnet50", **common
    )
    first.wait(60)
    second = trainer.start_callable(
        train(1.2, 0.35, fail_at=13), flow_step_id="finetune", name="fine-tune resnet50", **common
    )
    second.wait(60)
    again = trainer.retry(
        second, target=train(1.2, 0.35), name="fine-tune resnet50", total_epochs=3
    )
    again.wait(60)


if __name__ == "__main__":
    main()
