"""PULSE v1 compatibility in one package: the snapshot file, its sink, the bridge, hybrid reading.

This package owns everything about the v1 snapshot (``training_status.json``):

* :mod:`~pulse_transports.v1.snapshot` -- the format: :data:`V1_FILE`, status
  aliases, :func:`parse_snapshot`/:func:`read_snapshot`;
* :mod:`~pulse_transports.v1.sink` -- :class:`V1SnapshotSink`, the ``v1``
  transport writing a run's snapshot;
* :mod:`~pulse_transports.v1.hybrid` -- relating a snapshot to the v2 runs
  (:func:`find_owner`), :class:`HybridReader`, :func:`heal_v1_snapshot`;
* :mod:`~pulse_transports.v1.bridge` -- :class:`V1FileSource`, a legacy
  v1-only writer's file turned into v2 runs (``pulse bridge``).

The v1 projection itself is pure and lives in the core
(:func:`pulse_core.projections.to_v1`).
"""

from __future__ import annotations

from pulse_transports.v1._translate import (
    PATH_LABEL,
    SOURCE_LABEL,
    SOURCE_NAME,
    lifecycle_path,
    training_id_for,
)
from pulse_transports.v1.bridge import V1FileSource
from pulse_transports.v1.hybrid import (
    MATCH_SLACK,
    V1_ONLY_ID,
    HybridReader,
    HybridRun,
    find_owner,
    heal_v1_snapshot,
    healed_snapshot,
    snapshot_liveness,
    snapshot_state,
)
from pulse_transports.v1.sink import V1SnapshotSink
from pulse_transports.v1.snapshot import (
    STATUS_ALIASES,
    V1_FILE,
    InvalidSnapshot,
    V1Snapshot,
    map_status,
    parse_snapshot,
    parse_timestamp,
    read_snapshot,
)

__all__ = [
    "MATCH_SLACK",
    "PATH_LABEL",
    "SOURCE_LABEL",
    "SOURCE_NAME",
    "STATUS_ALIASES",
    "V1_FILE",
    "V1_ONLY_ID",
    "HybridReader",
    "HybridRun",
    "InvalidSnapshot",
    "V1FileSource",
    "V1Snapshot",
    "V1SnapshotSink",
    "find_owner",
    "heal_v1_snapshot",
    "healed_snapshot",
    "lifecycle_path",
    "map_status",
    "parse_snapshot",
    "parse_timestamp",
    "read_snapshot",
    "snapshot_liveness",
    "snapshot_state",
    "training_id_for",
]
