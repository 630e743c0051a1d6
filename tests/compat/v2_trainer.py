"""A real training script for the compatibility tests: TrainingRun with default sinks.

Usage: ``python v2_trainer.py MODE EPOCHS STEPS STEP_SECONDS``, with the home in
``PULSE_HOME`` (so the default sinks write the v2 log and the v1 snapshot).

MODE: ``complete`` (preparing, running, cooling_down, done), ``error`` (raises
in the last epoch), ``hang`` (after the first epoch prints ``READY <id>`` and
keeps reporting progress until it is killed).
"""

from __future__ import annotations

import sys
import time

from pulse_core import TrainingRun


def main() -> None:
    mode, epochs, steps, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    with TrainingRun(name=f"compat {mode}", total_epochs=epochs) as run:
        print(f"ID {run.training_id}", flush=True)
        run.status("preparing", "loading data")
        time.sleep(0.3)
        run.status("running", "training")
        loss = 1.0
        for epoch in range(1, epochs + 1):
            for step in range(1, steps + 1):
                loss *= 0.99
                run.progress(epoch=epoch, step=step, total_steps=steps)
                run.metrics(loss=loss)
                time.sleep(pause)
            if mode == "error" and epoch == epochs:
                raise FileNotFoundError("shard-9.npy")
            if mode == "hang" and epoch == 1:
                print(f"READY {run.training_id}", flush=True)
                step = 0
                while True:  # until SIGKILL: the v1 file keeps being rewritten
                    step += 1
                    loss *= 0.999
                    run.progress(epoch=epoch + 1, step=step % steps + 1, total_steps=steps)
                    run.metrics(loss=loss)
                    time.sleep(pause)
        run.status("cooling_down", "saving")
        time.sleep(0.3)


if __name__ == "__main__":
    main()
