"""A 2-process Lightning DDP fit on CPU (gloo) reporting with PULSE's callback.

Started by test_integrations_lightning.py with PULSE_HOME set; Lightning's DDP
launcher starts the second process by running this script again.
``PULSE_TEST_FAIL_RANK`` makes that rank raise a CUDA out-of-memory error at
global step 3; ``PULSE_TEST_KILL_RANK`` makes that rank SIGKILL itself there.
Not a test module.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning
import torch

from pulse_transports.integrations.lightning import PulseCallback

FAIL_RANK = int(os.environ.get("PULSE_TEST_FAIL_RANK", "-1"))
KILL_RANK = int(os.environ.get("PULSE_TEST_KILL_RANK", "-1"))


class Linear(lightning.LightningModule):  # type: ignore[misc]
    """A linear regression that can fail on one rank."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, index: int) -> Any:
        if self.global_rank == FAIL_RANK and self.global_step == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.global_rank == KILL_RANK and self.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    """Fit for 2 epochs of 4 batches per process."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = lightning.Trainer(
        max_epochs=2,
        callbacks=[PulseCallback(name="lightning-ddp")],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
    )
    trainer.fit(Linear(), torch.utils.data.DataLoader(data, batch_size=8))


if __name__ == "__main__":
    main()
