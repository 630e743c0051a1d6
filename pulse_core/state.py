"""The folded state of one training run: frozen, bounded, plain data.

This module owns :class:`RunState` and the limits that keep it bounded in
memory however many events are folded into it. It must never import I/O
modules. The reducer (:mod:`pulse_core.reducer`) is the only code that builds
states from events.

Metric history
    Each metric name has a :class:`Series` of at most ``MAX_WINDOWS`` fixed
    windows over the sample index (0, 1, 2, ... per series). A window is the
    plain tuple ``(x, n, first, last, lo, hi, t0, t1)``: the index of its
    first sample, how many samples, the first and last value, the minimum and
    maximum, and the timestamps of its first and last sample. All windows but
    the last cover ``width`` samples. When a new window would exceed the
    limit, adjacent pairs are merged and ``width`` doubles. The same sequence
    always gives the same windows (no randomness), and a spike survives as a
    window's ``hi``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from pulse_core.events import ErrorReported, Phase, RunMeta, is_terminal

#: Windows kept per metric series (each 8 numbers).
MAX_WINDOWS: Final = 128
#: Extra metric names with a history; later names only update the latest
#: values. The protocol's named metrics (:data:`PROTOCOL_METRICS`) always have one.
MAX_SERIES: Final = 16
#: Distinct extra metric names kept in the latest values; the protocol's
#: named metrics are always kept on top of these.
MAX_METRIC_NAMES: Final = 64
#: The metrics the protocol names: never refused by a cap.
PROTOCOL_METRICS: Final = frozenset(
    {"loss", "time_per_epoch", "samples_per_second", "tokens_per_second"}
)
#: Errors kept (the first ``HEAD_KEPT`` and the most recent rest).
MAX_ERRORS: Final = 32
#: Status timeline entries kept (first ``HEAD_KEPT`` and the most recent rest).
MAX_TIMELINE: Final = 64
#: Anomalies kept (first ``HEAD_KEPT`` and the most recent rest).
MAX_ANOMALIES: Final = 32
#: Gap ranges kept (the most recent).
MAX_GAPS: Final = 16
#: How many of the oldest entries a bounded list always keeps.
HEAD_KEPT: Final = 8

Window = tuple[int, int, float, float, float, float, float, float]


@attrs.frozen(slots=True)
class Series:
    """The downsampled history of one metric."""

    width: int = 1
    count: int = 0
    windows: tuple[Window, ...] = ()


@attrs.frozen(slots=True)
class StatusEntry:
    """One entry of the status timeline."""

    status: Phase = attrs.field(converter=Phase)
    message: str
    timestamp: float
    seq: int


@attrs.frozen(slots=True)
class Anomaly:
    """Something in the event stream that was recorded instead of applied.

    ``kind`` is one of: ``illegal_transition``, ``unknown_status``,
    ``after_terminal``, ``foreign_event``, ``bad_seq``, ``late_event``,
    ``too_many_metrics``.
    """

    seq: int
    kind: str
    detail: str


@attrs.frozen(slots=True)
class RunState:
    """Everything known about one run after folding its events."""

    training_id: str | None = None
    status: Phase = attrs.field(default=Phase.IDLE, converter=Phase)
    message: str = ""
    meta: RunMeta | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    #: latest value of every metric (loss, time_per_epoch, ..., extra names).
    metrics: Mapping[str, float] = attrs.field(factory=dict)
    best_loss: float | None = None
    #: lowest and highest value of every kept metric: exact when the writer
    #: sends ``min``/``max`` (every call), else of the values seen.
    metrics_min: Mapping[str, float] = attrs.field(factory=dict)
    metrics_max: Mapping[str, float] = attrs.field(factory=dict)
    #: distinct metric names the writer left out past its cap (``names_dropped``).
    metrics_dropped: int = 0
    history: Mapping[str, Series] = attrs.field(factory=dict)
    errors: tuple[ErrorReported, ...] = ()
    error_count: int = 0
    timeline: tuple[StatusEntry, ...] = ()
    timeline_count: int = 0
    #: seconds spent in each status that has been left or is current up to
    #: ``status_since`` (the current one is completed by projections, given now).
    status_durations: Mapping[str, float] = attrs.field(factory=dict)
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    status_since: float | None = None
    last_event_at: float | None = None
    last_seq: int = 0
    event_count: int = 0
    duplicates: int = 0
    missing: int = 0
    gaps: tuple[tuple[int, int], ...] = ()
    anomalies: tuple[Anomaly, ...] = ()
    anomaly_count: int = 0
    unknown_events: int = 0
    dropped: int = 0

    @property
    def is_terminal(self) -> bool:
        """True once the run is done, error or cancelled."""
        return is_terminal(self.status)
