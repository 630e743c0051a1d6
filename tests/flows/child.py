"""A training script for the flow tests; what it does is chosen by argv[1].

It uses only the environment PULSE sets (no PULSE arguments), as a user's
script would: ``TrainingRun()`` picks up the training id, home and flow link.
"""

from __future__ import annotations

import os
import signal
import sys
import time

mode = sys.argv[1]
if mode == "plain":  # a script that never imports PULSE
    time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0.2)
    sys.exit(int(sys.argv[2]))

from pulse_core import TrainingRun  # noqa: E402

run = TrainingRun(total_epochs=2, handle_signals=True)
run.status("running", "training")
for epoch in (1, 2):
    for step in range(1, 6):
        run.progress(epoch=epoch, step=step, total_steps=5)
        run.metrics(loss=1.0 / (epoch * 10 + step), samples_per_second=100.0 + step)
        time.sleep(0.01)
    if mode == "slow":
        time.sleep(0.5)
if mode == "oom":
    run.error("CUDA_OOM", "CUDA out of memory", is_retryable=True, details={"gpu": 0})
    sys.exit(1)
if mode == "sigkill":
    time.sleep(1.2)  # let the log take the latest values
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "abort":
    os.abort()
if mode == "exit3":
    os._exit(3)
if mode == "exit0":
    os._exit(0)  # reported progress, never done, skips atexit
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.1)
if mode == "wait_term":
    while True:  # handle_signals=True turns SIGTERM into cancelled
        time.sleep(0.1)
run.status("cooling_down", "saving")
run.close()
