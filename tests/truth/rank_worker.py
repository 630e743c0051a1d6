"""One rank of the truth matrix's torchrun scenario (2 CPU ranks, gloo).

Rank 0 reports with PULSE (``open_run`` + nested ``track``); rank 1 writes its
pid to ``$TRUTH_PIDFILE`` once training is under way, so the test can SIGKILL
it. The loop is bounded (about 20 s) whatever happens. Not a test module.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from pulse_transports.integrations import open_run, track

EPOCHS = 4
STEPS = 25


def main() -> None:
    """Train a DDP linear model slowly; rank 1 announces its pid in epoch 1."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with open_run(name="torchrun_rank_sigkill") as run:
        for _epoch in track(range(EPOCHS), unit="epoch"):
            for step in track(range(STEPS)):
                if (
                    dist.get_rank() == 1
                    and step == 2
                    and not os.path.exists(os.environ["TRUTH_PIDFILE"])
                ):
                    with open(os.environ["TRUTH_PIDFILE"] + ".tmp", "w") as f:
                        f.write(str(os.getpid()))
                    os.rename(os.environ["TRUTH_PIDFILE"] + ".tmp", os.environ["TRUTH_PIDFILE"])
                optimizer.zero_grad()
                loss = model(torch.randn(8, 4)).pow(2).mean()
                loss.backward()
                optimizer.step()
                run.metrics(loss=loss.detach())
                time.sleep(0.2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
