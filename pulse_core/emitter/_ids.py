"""Training ids and exception classification for the emitter.

This module owns :func:`new_training_id` (time-ordered, unique ids) and
:func:`classify_exception` (an exception as ``(error_code, is_retryable)``).
Uses time, secrets and threading; must never import :mod:`pulse_transports`.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime

from pulse_core.events import is_error_code

# -- training ids ------------------------------------------------------------------

_id_lock = threading.Lock()
_id_last: list[int] = [0, 0]  # [milliseconds, random part] of the last id made


def new_training_id(wall: float | None = None) -> str:
    """Make a time-ordered unique training id, e.g. ``20261129-013724-123-9f2c41d07b``.

    Ids made by one process sort in the order they were made (within one
    millisecond the random part counts up; so does a wall clock stepping
    back by less than a second); ids of different processes sort by their
    millisecond and are unique with overwhelming probability (39 random bits).
    """
    millis = int((time.time() if wall is None else wall) * 1000)
    with _id_lock:
        # The same millisecond (or a clock stepping back by less than a
        # second) counts up from the last id; anything else starts afresh.
        if 0 <= _id_last[0] - millis < 1000:
            millis = _id_last[0]
            rand = (_id_last[1] + 1) % (1 << 40)
        else:
            rand = secrets.randbits(39)  # room to count up within the millisecond
        _id_last[0], _id_last[1] = millis, rand
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{millis % 1000:03d}-{rand:010x}"


# -- exceptions ------------------------------------------------------------------------


def classify_exception(exc: BaseException) -> tuple[str, bool]:
    """Map an exception to ``(error_code, is_retryable)``.

    An exception may name its own code with attributes ``pulse_error_code``
    and ``pulse_retryable``. Otherwise: file not found -> DATASET_NOT_FOUND;
    CUDA/torch/TF/JAX out-of-memory -> CUDA_OOM (retryable: memory may free
    up); MemoryError -> OUT_OF_MEMORY (retryable); anything else ->
    UNHANDLED_EXCEPTION.
    """
    own = getattr(exc, "pulse_error_code", None)
    if isinstance(own, str) and is_error_code(own):
        return own, bool(getattr(exc, "pulse_retryable", False))
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or name in ("DatasetNotFoundError", "DataFileNotFound"):
        return "DATASET_NOT_FOUND", False
    if name in ("OutOfMemoryError", "ResourceExhaustedError") or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    ):
        return "CUDA_OOM", True
    if isinstance(exc, MemoryError):
        return "OUT_OF_MEMORY", True
    return "UNHANDLED_EXCEPTION", False
