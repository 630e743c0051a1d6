"""The common log lines' exact shapes, decoded by msgspec for the fast fold.

:mod:`pulse_core._fastfold` decodes a line with :data:`DECODER` first: a line
of exactly one of these shapes comes back as a struct whose fields have the
JSON types given here, checked in C; any other line (another type, a field
not named here, a field of another JSON type, ``v`` not the integer 2, not
JSON, nested too deep) raises one of :data:`NOT_COMMON` and is read from
orjson's dict instead (:mod:`pulse_core._dictfold`).

The field types keep every distinction the ordinary decoder's input (orjson's
dict) makes:

* a JSON integer where a float goes stays an ``int`` (:data:`Number`; msgspec
  would make a float of it for a ``float`` field): the fold takes floats only;
* an integer past 64 bits, which orjson reads as a float, is refused
  (:data:`Int64`; from 2**63 to 2**64 - 1 too, which orjson reads as an int:
  msgspec takes no bound past int64, and such a line is read from the dict);
* ``true``/``false`` are never numbers, and ``v`` is exactly the integer 2;
* ``null`` is the field's absence where the fold treats it so (``None``), a
  refusal where it does not (``UNSET``: ``extra``, ``min``, ``max``);
* a duplicate key: the last value is kept, as orjson does (a duplicate
  ``type`` is refused); strings are unescaped and UTF-8 checked as orjson does.

Private to the core; must never import I/O modules.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "DECODER",
    "NOT_COMMON",
    "UNSET",
    "CommonHeartbeat",
    "CommonMetrics",
    "CommonProgress",
    "Int64",
    "Number",
]

#: A JSON integer of 64 bits, signed. orjson reads one up to 2**64 - 1 as an int,
#: beyond as a float (msgspec keeps it an int): a line with a greater one is read
#: from orjson's dict (msgspec takes no bound beyond int64).
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
#: A JSON number, its kind kept (the fold takes only floats).
Number = int | float


class _Common(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, gc=False):
    """The envelope every common line has (``v`` exactly the integer 2)."""

    training_id: str
    seq: Int64
    timestamp: Number
    v: Literal[2]


class CommonProgress(_Common, tag="progress"):
    """A ``progress`` line."""

    epoch: Int64 | None = None
    total_epochs: Int64 | None = None
    step: Int64 | None = None
    total_steps: Int64 | None = None


class CommonMetrics(_Common, tag="metrics"):
    """A ``metrics`` line (values of any JSON type in the objects: checked by the fold)."""

    loss: Number | None = None
    time_per_epoch: Number | None = None
    samples_per_second: Number | None = None
    tokens_per_second: Number | None = None
    extra: dict[str, Any] | UnsetType = UNSET
    min: dict[str, Any] | UnsetType = UNSET
    max: dict[str, Any] | UnsetType = UNSET
    names_dropped: Int64 | None = None


class CommonHeartbeat(_Common, tag="heartbeat"):
    """A ``heartbeat`` line."""


DECODER: Final = msgspec.json.Decoder(CommonProgress | CommonMetrics | CommonHeartbeat)
#: What :data:`DECODER` raises for a line not of a common shape (a ValidationError
#: is a DecodeError; RecursionError: values nested deeper than the interpreter allows).
NOT_COMMON: Final = (msgspec.DecodeError, RecursionError)
