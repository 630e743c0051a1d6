"""``pulse run``: run any training command as a supervised, honest PULSE run."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import click

from pulse_core.errors import InvalidTrainingId, PulseError
from pulse_core.events import validate_training_id
from pulse_core.projections import to_view
from pulse_transports.cli._common import EXIT_USAGE, home_option, id_error, main, resolve_config
from pulse_transports.supervise import CLAIM_TIMEOUT, FlowLink, Supervisor, read_state

#: Exit status when the command could not be started (as a shell does).
EXIT_LAUNCH_FAILED = 127


def _validated_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_training_id(value)
    except InvalidTrainingId:
        raise click.BadParameter(id_error(value)) from None


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--training-id", callback=_validated_id, help="Run id (default: a new one).")
@click.option("--flow-id", default=None, help="Flow this run belongs to.")
@click.option("--flow-run-id", default=None, help="Flow run this run belongs to.")
@click.option("--flow-step-id", default=None, help="Flow step (TRAIN) this run belongs to.")
@click.option(
    "--attempt",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Attempt number of the step.",
)
@click.option("--total-epochs", type=click.IntRange(1), default=None, help="Epochs planned.")
@click.option("--name", default=None, help="A short human name for the run.")
@click.option(
    "--claim-timeout",
    type=click.FloatRange(0.0),
    default=CLAIM_TIMEOUT,
    show_default=True,
    help="Seconds of checks every 50 ms for the command taking its run over (then 250 ms).",
)
@home_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(
    training_id: str | None,
    flow_id: str | None,
    flow_run_id: str | None,
    flow_step_id: str | None,
    attempt: int,
    total_epochs: int | None,
    name: str | None,
    claim_timeout: float,
    home: Path | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a supervised training run and exit with its status.

    The command gets PULSE_TRAINING_ID, PULSE_HOME and the flow link
    (PULSE_FLOW_ID, PULSE_FLOW_RUN_ID, PULSE_FLOW_STEP_ID, PULSE_ATTEMPT from
    --attempt) in its environment, so a TrainingRun inside it reports into this run without
    code changes. A command that never reports still gets an honest run:
    preparing on launch, running once started (kept alive by pulse run's
    heartbeats and the v1 snapshot), done or error from its exit status. The
    command's stderr passes through; its last 40 lines are kept in the
    error's details and classified (CUDA_OOM, DATASET_NOT_FOUND, ...).
    Ctrl-C (or SIGTERM) is forwarded to the command and the run ends
    cancelled; a second Ctrl-C sends SIGTERM, a third SIGKILL.

    \b
    Examples:
      pulse run -- python train.py --epochs 10
      pulse run --flow-id f1 --flow-run-id fr7 --flow-step-id train -- ./train.sh
    """
    config = resolve_config(home)
    supervisor = Supervisor(
        list(command),
        home=config.home,
        training_id=training_id,
        link=FlowLink(flow_id, flow_run_id, flow_step_id, attempt),
        name=name,
        total_epochs=total_epochs,
        claim_timeout=claim_timeout,
        config=config,
    )
    interrupts = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        supervisor.request_cancel(f"cancelled by {signal.Signals(signum).name}")
        escalation = {1: signum, 2: signal.SIGTERM}.get(interrupts, signal.SIGKILL)
        supervisor.send_signal(escalation)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            supervisor.start()
        except PulseError as exc:  # RunExists, RunLocked: nothing was launched
            click.echo(f"pulse: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        click.echo(f"pulse: run {supervisor.training_id}", err=True)
        live = sys.stderr.isatty()
        stop = threading.Event()
        if live:
            threading.Thread(
                target=_show_progress, args=(supervisor, config.home, stop), daemon=True
            ).start()
        outcome = None
        while outcome is None:
            outcome = supervisor.wait(timeout=0.2)
        stop.set()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary = f"pulse: run {outcome.training_id} ended {outcome.status}"
    if outcome.error:
        summary += f" ({outcome.error['error_code']}: {outcome.error['message']})"
    click.echo(summary, err=True)
    code = outcome.exit_code
    if code is None:
        sys.exit(EXIT_LAUNCH_FAILED if outcome.status == "error" else 0)
    sys.exit(128 - code if code < 0 else code)


def _show_progress(supervisor: Supervisor, home: Path, stop: threading.Event) -> None:
    """Draw a one-line progress view on stderr until the run ends."""
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:
        while not stop.wait(0.25):
            view = to_view(read_state(home, supervisor.training_id), now=time.time())
            progress = view["progress"]
            fraction = progress["fraction"]
            text = f"{view['status']}"
            if fraction is not None:
                text += f" {100 * fraction:5.1f}%"
            if progress["epoch"] is not None:
                text += f"  epoch {progress['epoch']}/{progress['total_epochs'] or '?'}"
            loss = view["metrics"].get("loss")
            if loss is not None:
                text += f"  loss {loss:.4g}"
            status.update(text)
