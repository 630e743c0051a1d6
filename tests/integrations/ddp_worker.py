"""One rank of a 2-process torch.distributed (gloo) job that reports with PULSE.

Started by test_integrations_distributed.py with RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT and PULSE_HOME set; ``PULSE_TEST_FAIL_RANK`` makes that rank raise
a CUDA out-of-memory error in epoch 2, step 3; ``PULSE_TEST_KILL_RANK`` makes
that rank SIGKILL itself there. Not a test module.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import torch
import torch.distributed as dist

from pulse_transports.integrations import open_run, track

EPOCHS = 2
STEPS = 5


def main() -> None:
    """Train a DDP linear model for EPOCHS x STEPS steps, reporting from rank 0 only."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    fail_rank = int(os.environ.get("PULSE_TEST_FAIL_RANK", "-1"))
    kill_rank = int(os.environ.get("PULSE_TEST_KILL_RANK", "-1"))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with open_run(name="ddp") as run:
        for epoch in track(range(EPOCHS), unit="epoch"):
            for step in track(range(STEPS)):
                if dist.get_rank() == fail_rank and epoch == 1 and step == 2:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                if dist.get_rank() == kill_rank and epoch == 1 and step == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                optimizer.zero_grad()
                loss = model(torch.randn(8, 4)).pow(2).mean()
                loss.backward()
                optimizer.step()
                run.metrics(loss=loss.detach())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
