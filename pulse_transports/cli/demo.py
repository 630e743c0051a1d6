"""``pulse demo``: a small, real training run reported through PULSE v2.

A two-layer perceptron (numpy) learns a synthetic classification problem
generated on the spot: no downloads, no torch. The run goes preparing ->
running (epochs and steps, loss going down) -> cooling_down (saving a
checkpoint) -> done, writing the v2 log and the v1 snapshot, while a terminal
sink draws a progress bar from the same rate-limited events a UI would get.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from pulse_core.emitter import TrainingRun
from pulse_core.errors import PulseError
from pulse_core.events import Event
from pulse_core.projections import to_view
from pulse_core.reducer import Folder
from pulse_transports.cli._common import EXIT_FAILED, home_option, main, resolve_config
from pulse_transports.file import log_path
from pulse_transports.registry import make_sinks
from pulse_transports.v1.snapshot import V1_FILE


class TerminalSink:
    """A live sink that draws the run in the terminal (10 updates/s at most)."""

    name = "terminal"
    interval = 0.1
    boundaries = False

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._folder = Folder()
        self._task: Any = None

    def open(self, training_id: str) -> int | None:
        self._task = self._progress.add_task(training_id, total=100.0, status="idle", info="")
        return None

    def write(self, event: Event) -> None:
        self._folder.apply(event)
        view = to_view(self._folder.state, now=time.time())
        progress = view["progress"]
        fraction = progress["fraction"]
        parts = []
        if progress["epoch"] is not None:
            parts.append(f"epoch {progress['epoch']}/{progress['total_epochs'] or '?'}")
        if progress["step"] is not None:
            parts.append(f"step {progress['step']}/{progress['total_steps'] or '?'}")
        loss = view["metrics"].get("loss")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if view["last_error"] is not None:
            parts.append(f"[red]{view['last_error']['error_code']}[/red]")
        self._progress.update(
            self._task,
            completed=100.0 * fraction if fraction is not None else None,
            status=view["status"],
            info="  ".join(parts),
        )
        self._progress.refresh()  # at most 10 times a second: the emitter throttles us

    def flush(self, durable: bool) -> None:
        self._progress.refresh()

    def close(self) -> None:
        self._progress.refresh()


def make_data(rng: Any, samples: int, features: int) -> tuple[Any, Any]:
    """Two noisy classes split by a curved boundary (``sin`` of a projection).

    The projection is scaled to unit variance so the problem is learnable:
    the loss falls visibly from ~0.69 within the first epochs.
    """
    import numpy as np

    x = rng.normal(size=(samples, features))
    w = rng.normal(size=(features,)) / np.sqrt(features)
    y = ((np.sin(x @ w) + 0.3 * rng.normal(size=samples)) > 0).astype(np.float64)
    return x, y


def train(
    run: TrainingRun,
    epochs: int,
    fail_at: int | None,
    checkpoint: Path,
    samples: int = 60_000,
    batch: int = 128,
    hidden: int = 256,
    seed: int = 7,
) -> float:
    """Train the perceptron, reporting through *run*; return the final loss."""
    import numpy as np

    run.status("preparing", "generating the data set")
    rng = np.random.default_rng(seed)
    features = 32
    x, y = make_data(rng, samples, features)
    w1 = rng.normal(scale=1 / np.sqrt(features), size=(features, hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(scale=1 / np.sqrt(hidden), size=(hidden,))
    b2 = 0.0
    lr = 0.05
    steps = samples // batch
    run.status("running", f"training {epochs} epochs of {steps} steps")
    loss = float("nan")
    for epoch in range(1, epochs + 1):
        if fail_at is not None and epoch == fail_at:
            raise FileNotFoundError(
                f"data shard for epoch {epoch} not found: shard-{epoch:03d}.npy"
            )
        started = time.perf_counter()
        order = rng.permutation(samples)
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = x[idx], y[idx]
            h = np.maximum(xb @ w1 + b1, 0.0)
            p = 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))
            loss = float(-np.mean(yb * np.log(p + 1e-9) + (1 - yb) * np.log(1 - p + 1e-9)))
            g = (p - yb) / batch
            gh = np.outer(g, w2) * (h > 0)
            w2 -= lr * (h.T @ g)
            b2 -= lr * float(g.sum())
            w1 -= lr * (xb.T @ gh)
            b1 -= lr * gh.sum(axis=0)
            run.progress(epoch=epoch, total_epochs=epochs, step=step + 1, total_steps=steps)
            run.metrics(loss=loss)
        elapsed = time.perf_counter() - started
        run.metrics(time_per_epoch=elapsed, samples_per_second=steps * batch / elapsed)
    run.status("cooling_down", "saving the checkpoint")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    np.savez(checkpoint, w1=w1, b1=b1, w2=w2, b2=b2)
    run.status("done", f"final loss {loss:.4f}")
    return loss


@main.command()
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--fail-at",
    type=click.IntRange(1),
    default=None,
    help="Fail at this epoch with a DATASET_NOT_FOUND error (to see an error run).",
)
@click.option("--training-id", default=None, help="Run id (default: a new time-ordered id).")
@home_option
def demo(epochs: int, fail_at: int | None, training_id: str | None, home: Path | None) -> None:
    """Run a small real training (numpy MLP on generated data), reported live.

    Writes the v2 log to <home>/logs/training/<id>.jsonl and the v1 snapshot
    to <home>/training_status.json; finishes in well under 30 seconds.

    \b
    Examples:
      pulse demo
      pulse demo --epochs 3 --fail-at 2
      pulse demo --home /tmp/pulse
    """
    # The matrices are small: BLAS worker threads cost far more than they
    # save (2-10x slower on a busy 2-core machine). Only effective before
    # numpy's first import, which is why numpy is imported here, lazily.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "pulse demo needs numpy: python3 -m pip install 'pulse-v2[demo]'"
        ) from None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    config = resolve_config(home)
    console = Console(stderr=False)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[status]:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        auto_refresh=False,
    )
    try:
        sinks = [
            *make_sinks(config.transports, config.home, config.transport_options),
            TerminalSink(bar),
        ]
        run = TrainingRun(
            training_id,
            name="pulse demo (numpy MLP)",
            total_epochs=epochs,
            sinks=sinks,
            handle_signals=True,  # Ctrl-C or SIGTERM: the run ends cancelled
        )
    except PulseError as exc:
        raise click.ClickException(str(exc)) from None
    checkpoint = config.home / "checkpoints" / f"{run.training_id}.npz"
    failure: str | None = None
    with bar:
        try:
            with run:
                train(run, epochs, fail_at, checkpoint)
        except FileNotFoundError as exc:
            failure = str(exc)  # the run recorded it: error DATASET_NOT_FOUND
    path = log_path(config.home, run.training_id)
    if failure is not None:
        console.print(f"[red]run {run.training_id} ended with error DATASET_NOT_FOUND: {failure}")
    else:
        console.print(f"run {run.training_id} done; checkpoint {checkpoint}")
    console.print(f"v2 log: {path}")
    console.print(f"v1 snapshot: {config.home / V1_FILE}")
    if failure is not None:
        sys.exit(EXIT_FAILED)
