"""Integrations: report training from frameworks and hand-written loops to PULSE.

This package owns the bridges from training code to
:class:`~pulse_core.emitter.TrainingRun`:

* :mod:`~pulse_transports.integrations.hf` -- Hugging Face Transformers
  ``TrainerCallback``;
* :mod:`~pulse_transports.integrations.lightning` -- PyTorch Lightning ``Callback``;
* :mod:`~pulse_transports.integrations.keras` -- Keras 3 ``Callback``;
* :mod:`~pulse_transports.integrations.tracking` -- ``track()``, a tqdm-like loop wrapper;
* :mod:`~pulse_transports.integrations.distributed` -- which rank reports, and
  how other ranks' failures reach the run.

Each framework module imports its framework, and only it does: importing this
package (or ``track`` / ``distributed``) imports no framework. The names below
are loaded on first use; the framework callbacks are imported from their
modules, e.g. ``from pulse_transports.integrations.hf import PulseCallback``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pulse_core._lazy import lazy_exports

if TYPE_CHECKING:
    from pulse_transports.integrations.distributed import (
        MainRun,
        PeerRun,
        RankInfo,
        open_run,
        rank_info,
        read_rank_errors,
    )
    from pulse_transports.integrations.tracking import current_run, set_current_run, track

_WHERE = {
    "MainRun": "distributed",
    "PeerRun": "distributed",
    "RankInfo": "distributed",
    "open_run": "distributed",
    "rank_info": "distributed",
    "read_rank_errors": "distributed",
    "current_run": "tracking",
    "set_current_run": "tracking",
    "track": "tracking",
}

__all__ = [
    "MainRun",
    "PeerRun",
    "RankInfo",
    "current_run",
    "open_run",
    "rank_info",
    "read_rank_errors",
    "set_current_run",
    "track",
]


__getattr__ = lazy_exports(__name__, _WHERE, globals())
