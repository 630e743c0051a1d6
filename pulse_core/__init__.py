"""PULSE v2 core: events, codec, lifecycle, reducer, projections, emitter.

``import pulse_core`` stays lean: the names below are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pulse_core._lazy import lazy_exports

if TYPE_CHECKING:
    from pulse_core.codec import decode, encode, from_cloudevent, to_cloudevent
    from pulse_core.emitter import TrainingRun
    from pulse_core.errors import (
        ConfigError,
        DecodeError,
        IllegalTransition,
        InvalidTrainingId,
        PulseError,
        RunExists,
        RunLocked,
    )
    from pulse_core.events import (
        PROTOCOL_VERSION,
        Dropped,
        ErrorReported,
        Event,
        Heartbeat,
        Metrics,
        Progress,
        RunMeta,
        StatusChanged,
        UnknownEvent,
        validate_training_id,
    )
    from pulse_core.liveness import liveness_of
    from pulse_core.ports import Sink
    from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
    from pulse_core.reducer import Folder, reduce, replay, replay_runs
    from pulse_core.state import RunState

_WHERE = {
    "decode": "codec",
    "encode": "codec",
    "to_cloudevent": "codec",
    "from_cloudevent": "codec",
    "TrainingRun": "emitter",
    "ConfigError": "errors",
    "DecodeError": "errors",
    "IllegalTransition": "errors",
    "InvalidTrainingId": "errors",
    "PulseError": "errors",
    "RunExists": "errors",
    "RunLocked": "errors",
    "PROTOCOL_VERSION": "events",
    "Dropped": "events",
    "ErrorReported": "events",
    "Event": "events",
    "Heartbeat": "events",
    "Metrics": "events",
    "Progress": "events",
    "RunMeta": "events",
    "StatusChanged": "events",
    "UnknownEvent": "events",
    "validate_training_id": "events",
    "liveness_of": "liveness",
    "Sink": "ports",
    "to_history_record": "projections",
    "to_metric_history": "projections",
    "to_v1": "projections",
    "to_view": "projections",
    "Folder": "reducer",
    "reduce": "reducer",
    "replay": "reducer",
    "replay_runs": "reducer",
    "RunState": "state",
}

__all__ = [
    "PROTOCOL_VERSION",
    "ConfigError",
    "DecodeError",
    "Dropped",
    "ErrorReported",
    "Event",
    "Folder",
    "Heartbeat",
    "IllegalTransition",
    "InvalidTrainingId",
    "Metrics",
    "Progress",
    "PulseError",
    "RunExists",
    "RunLocked",
    "RunMeta",
    "RunState",
    "Sink",
    "StatusChanged",
    "TrainingRun",
    "UnknownEvent",
    "decode",
    "encode",
    "from_cloudevent",
    "liveness_of",
    "reduce",
    "replay",
    "replay_runs",
    "to_cloudevent",
    "to_history_record",
    "to_metric_history",
    "to_v1",
    "to_view",
    "validate_training_id",
]


__getattr__ = lazy_exports(__name__, _WHERE, globals())
