"""``pulse demo``: a small, real training run reported through PULSE v2.

A two-layer perceptron (numpy) learns a synthetic classification problem
generated on the spot: no downloads, no torch. The run goes preparing ->
running (epochs and steps) -> cooling_down (saving a checkpoint) -> done,
writing the v2 log and the v1 snapshot, while the terminal shows the run from
the same rate-limited events a UI would get.

What it reports: ``loss`` is the epoch-mean training loss (reported once per
epoch, so the recorded curve falls smoothly instead of carrying the noise of
one batch), ``val_loss`` and ``val_accuracy`` are measured on a held-out set
at the end of each epoch, and ``batch_loss`` is the latest batch's loss (live
only). By default every step is paced so the run lasts about 20 seconds --
long enough to try ``pulse watch`` or the web view on it; ``--fast`` trains
unpaced (tests).

Terminal output: on a terminal a compact bar that fits 80 columns; when the
output is not a terminal (piped, redirected) one plain line per epoch. The
closing summary (run id, outcome, files) is the same for done, error and
Ctrl-C runs.
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
from pulse_core.events import Event, validate_training_id
from pulse_core.projections import to_view
from pulse_core.reducer import Folder
from pulse_transports.cli._common import (
    EXIT_FAILED,
    home_option,
    id_error,
    main,
    resolve_config,
)
from pulse_transports.file import log_path
from pulse_transports.homemode import make_dirs, open_file
from pulse_transports.registry import make_sinks
from pulse_transports.v1.snapshot import V1_FILE

#: Seconds one paced epoch lasts by default (20 epochs: about 20 s).
EPOCH_SECONDS = 1.0
#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def _info(view: dict[str, Any], with_step: bool) -> str:
    """``epoch 3/20  step 10/156  loss 0.5123  val_acc 0.812`` from a v2 view."""
    progress = view["progress"]
    parts = []
    if progress["epoch"] is not None:
        parts.append(f"epoch {progress['epoch']}/{progress['total_epochs'] or '?'}")
    if with_step and progress["step"] is not None:
        parts.append(f"step {progress['step']}/{progress['total_steps'] or '?'}")
    metrics = view["metrics"]
    loss = metrics.get("loss")
    if loss is not None:
        parts.append(f"loss {loss:.4f}")  # the last finished epoch's mean
    elif metrics.get("batch_loss") is not None:
        parts.append(f"batch {metrics['batch_loss']:.4f}")  # during the first epoch
    if metrics.get("val_accuracy") is not None:
        parts.append(f"val_acc {metrics['val_accuracy']:.3f}")
    if view["last_error"] is not None:
        parts.append(str(view["last_error"]["error_code"]))
    return "  ".join(parts)


class TerminalSink:
    """A live sink that draws the run on a terminal (10 updates/s at most).

    One line that fits 80 columns: status, bar, percentage, elapsed time,
    epoch, loss and validation accuracy (the bar shows the steps).
    """

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
        fraction = view["progress"]["fraction"]
        self._progress.update(
            self._task,
            completed=100.0 * fraction if fraction is not None else None,
            status=view["status"],
            info=_info(view, with_step=False),
        )
        self._progress.refresh()  # at most 10 times a second: the emitter throttles us

    def flush(self, durable: bool) -> None:
        self._progress.refresh()

    def close(self) -> None:
        self._progress.refresh()


class LineSink:
    """A sink for a pipe or a file: one plain, complete line per epoch and per status.

    Keeps every epoch boundary (like the durable log), so each finished
    epoch's epoch-mean loss and validation figures get their line.
    """

    name = "lines"
    interval = 1.0
    boundaries = True

    def __init__(self) -> None:
        self._folder = Folder()
        self._status: str | None = None
        self._closing: float | None = None

    def open(self, training_id: str) -> int | None:
        return None

    def write(self, event: Event) -> None:
        self._folder.apply(event)
        view = to_view(self._folder.state, now=time.time())
        status = view["status"]
        if status not in (self._status, "idle"):
            self._status = status
            message = view.get("message") or ""
            click.echo(f"{status:<12} {message}".rstrip())
        metrics = view["metrics"]
        epoch = view["progress"]["epoch"]
        closing = metrics.get("time_per_epoch")
        if closing is not None and closing != self._closing and "val_loss" in metrics:
            # A new epoch's closing metrics (loss, val_loss, val_accuracy) arrived.
            self._closing = closing
            click.echo(
                f"epoch {epoch}/{view['progress']['total_epochs'] or '?'}"
                f"  loss {metrics['loss']:.4f}"
                f"  val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_accuracy']:.3f}"
            )

    def flush(self, durable: bool) -> None:
        return None

    def close(self) -> None:
        return None


def make_data(rng: Any, samples: int, features: int) -> tuple[Any, Any]:
    """Two noisy classes split by a curved boundary (``sin`` of a projection).

    Curved enough that a small network needs many epochs: the epoch-mean loss
    falls from ~0.69 to ~0.3 over 20 epochs, and validation accuracy climbs
    from ~0.7 to ~0.92.
    """
    import numpy as np

    x = rng.normal(size=(samples, features))
    w = rng.normal(size=(features,)) / np.sqrt(features)
    y = ((np.sin(2.0 * (x @ w)) + 0.2 * rng.normal(size=samples)) > 0).astype(np.float64)
    return x, y


def train(
    run: TrainingRun,
    epochs: int,
    fail_at: int | None,
    checkpoint: Path,
    samples: int = 20_000,
    batch: int = 128,
    hidden: int = 128,
    seed: int = 7,
    epoch_seconds: float = 0.0,
) -> float:
    """Train the perceptron, reporting through *run*; return the last epoch-mean loss.

    *epoch_seconds* > 0 paces the steps so an epoch lasts about that long.
    """
    import numpy as np

    run.status("preparing", "generating the data set")
    rng = np.random.default_rng(seed)
    features = 8
    held_out = samples // 5
    x_all, y_all = make_data(rng, samples + held_out, features)
    x, y = x_all[:samples], y_all[:samples]
    x_val, y_val = x_all[samples:], y_all[samples:]
    w1 = rng.normal(scale=1 / np.sqrt(features), size=(features, hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(scale=1 / np.sqrt(hidden), size=(hidden,))
    b2 = 0.0
    lr = 0.05
    steps = samples // batch
    pace = epoch_seconds / steps
    run.status("running", f"training {epochs} epochs of {steps} steps")
    loss = float("nan")

    def forward(xs: Any) -> tuple[Any, Any]:
        h = np.maximum(xs @ w1 + b1, 0.0)
        return h, 1.0 / (1.0 + np.exp(-(h @ w2 + b2)))

    def bce(p: Any, ys: Any) -> float:
        return float(-np.mean(ys * np.log(p + 1e-9) + (1 - ys) * np.log(1 - p + 1e-9)))

    for epoch in range(1, epochs + 1):
        if fail_at is not None and epoch == fail_at:
            raise FileNotFoundError(
                f"data shard for epoch {epoch} not found: shard-{epoch:03d}.npy"
            )
        started = time.perf_counter()
        order = rng.permutation(samples)
        total = 0.0
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = x[idx], y[idx]
            h, p = forward(xb)
            batch_loss = bce(p, yb)
            total += batch_loss
            g = (p - yb) / batch
            gh = np.outer(g, w2) * (h > 0)
            w2 -= lr * (h.T @ g)
            b2 -= lr * float(g.sum())
            w1 -= lr * (xb.T @ gh)
            b1 -= lr * gh.sum(axis=0)
            run.progress(epoch=epoch, total_epochs=epochs, step=step + 1, total_steps=steps)
            run.metrics(batch_loss=batch_loss)
            if pace:
                wait = started + pace * (step + 1) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
        elapsed = time.perf_counter() - started
        loss = total / steps
        _, p_val = forward(x_val)
        run.metrics(
            loss=loss,
            val_loss=bce(p_val, y_val),
            val_accuracy=float(np.mean((p_val > 0.5) == y_val)),
            time_per_epoch=elapsed,
            samples_per_second=steps * batch / elapsed,
        )
    run.status("cooling_down", "saving the checkpoint")
    make_dirs(checkpoint.parent)
    fd = open_file(checkpoint, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, w1=w1, b1=b1, w2=w2, b2=b2)
    run.status("done", f"final loss {loss:.4f}")
    return loss


def _validated_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_training_id(value)
    except (PulseError, ValueError):
        raise click.BadParameter(id_error(value)) from None


@main.command()
@click.option(
    "--epochs",
    default=20,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Epochs to train.",
)
@click.option(
    "--fast",
    is_flag=True,
    help=f"Train unpaced (each epoch otherwise lasts about {EPOCH_SECONDS:g} s).",
)
@click.option(
    "--fail-at",
    type=click.IntRange(1),
    default=None,
    help="Fail at this epoch with a DATASET_NOT_FOUND error (to see an error run).",
)
@click.option(
    "--training-id",
    default=None,
    callback=_validated_id,
    help="Run id (default: a new time-ordered id).",
)
@home_option
def demo(
    epochs: int, fast: bool, fail_at: int | None, training_id: str | None, home: Path | None
) -> None:
    """Run a small real training (numpy MLP on generated data), reported live.

    Reports the epoch-mean training loss and a validation loss and accuracy
    every epoch; about 20 seconds by default (--fast: about a second).
    Writes the v2 log to <home>/logs/training/<id>.jsonl, the v1 snapshot to
    <home>/training_status.json and a checkpoint to <home>/checkpoints/.
    Ctrl-C ends the run cancelled (exit 130).

    \b
    Examples:
      pulse demo
      pulse demo --fast --epochs 3
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
    live = console.is_terminal
    bar = Progress(
        TextColumn("{task.fields[status]:<12}"),
        BarColumn(bar_width=12),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        auto_refresh=False,
    )
    view_sink: Any = TerminalSink(bar) if live else LineSink()
    try:
        sinks = [*make_sinks(config.transports, config.home, config.transport_options), view_sink]
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
    click.echo(f"run {run.training_id} (Ctrl-C to stop)")
    outcome = "done"
    code = 0
    try:
        if live:
            bar.start()
        try:
            with run:
                train(
                    run,
                    epochs,
                    fail_at,
                    checkpoint,
                    epoch_seconds=0.0 if fast else EPOCH_SECONDS,
                )
        finally:
            if live:
                bar.stop()
    except FileNotFoundError as exc:  # the run recorded it: error DATASET_NOT_FOUND
        outcome, code = f"ended with error DATASET_NOT_FOUND: {exc}", EXIT_FAILED
    except KeyboardInterrupt:  # the run recorded it: cancelled by SIGINT
        outcome, code = "cancelled (Ctrl-C)", EXIT_INTERRUPTED
    summary(config.home, run.training_id, outcome, checkpoint if code == 0 else None)
    if code:
        sys.exit(code)


def summary(home: Path, training_id: str, outcome: str, checkpoint: Path | None) -> None:
    """The closing lines: outcome, files, and what to try next (plain, never wrapped)."""
    state = run_state(home, training_id)
    loss = state.get("loss")
    tail = f"; final loss {loss:.4f}" if outcome == "done" and loss is not None else ""
    click.echo(f"run {training_id} {outcome}{tail}")
    click.echo(f"  v2 log:      {log_path(home, training_id)}")
    click.echo(f"  v1 snapshot: {home / V1_FILE}")
    if checkpoint is not None:
        click.echo(f"  checkpoint:  {checkpoint}")
    home_arg = "" if _is_default_home(home) else f" --home {home}"
    click.echo("try next:")
    click.echo(f"  pulse show{home_arg}              the run's timeline and loss curve")
    click.echo(f"  pulse watch{home_arg}             in a 2nd terminal, then pulse demo again")
    click.echo(f"  pulse serve{home_arg} --http 7434 the web view: open the URL it prints")


def run_state(home: Path, training_id: str) -> dict[str, Any]:
    """The run's latest metrics as the log recorded them (empty if unreadable)."""
    from pulse_core.codec import decode

    try:
        folder = Folder()
        for line in log_path(home, training_id).read_bytes().splitlines():
            try:
                folder.apply(decode(line))
            except Exception:  # noqa: BLE001, S112 - a bad line: the summary skips it
                continue
        metrics: dict[str, Any] = to_view(folder.state, now=time.time())["metrics"]
    except (OSError, PulseError):
        return {}
    return metrics


def _is_default_home(home: Path) -> bool:
    return "PULSE_HOME" not in os.environ and home == Path(".pulse")
