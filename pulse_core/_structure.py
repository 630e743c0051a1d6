"""The decode fast path: per event class, a generated structure function.

Private to :mod:`pulse_core.codec`, which builds one function per wire tag at
import. Must never import I/O modules.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

# --- the decode fast path -------------------------------------------------
# cattrs' generated hooks call one function per field (~1.7 us for a progress
# event); replay needs decode + reduce under ~3 us. So per event class we
# generate, once at import and from the attrs fields themselves (so it cannot
# drift from the classes), a function that checks each field inline and calls
# the constructor positionally (~0.9 us). The cattrs converter stays the
# reference: it encodes, and it explains a failure (see _explain). A test
# checks both paths agree.

_CHECKS: Final[Mapping[object, str]] = {
    int: "if {x}.__class__ is not int: raise TypeError('expected an integer')",
    str: "if {x}.__class__ is not str: raise TypeError('expected a string')",
    bool: "if {x} is not True and {x} is not False: raise TypeError('expected a bool')",
    float: (
        "if {x}.__class__ is not float:\n"
        "        if {x}.__class__ is int: {x} = float({x})\n"
        "        else: raise TypeError('expected a number')"
    ),
    Mapping[str, str]: "_check_map({x}, str)",
    Mapping[str, float]: "{x} = _float_map({x})",
    Mapping[str, Any]: "_check_map({x}, None)",
}


def _check_map(value: Any, value_type: type | None) -> None:
    if value.__class__ is not dict:
        raise TypeError("expected an object")
    if value_type is not None:
        for item in value.values():
            if item.__class__ is not value_type:
                raise TypeError(f"expected {value_type.__name__} values")


def _float_map(value: Any) -> dict[str, float]:
    if value.__class__ is not dict:
        raise TypeError("expected an object")
    for item in value.values():
        if item.__class__ is not float:
            break
    else:
        return value  # all floats (the common case): no copy
    out: dict[str, float] = {}
    for key, item in value.items():
        cls = item.__class__
        if cls is float:
            out[key] = item
        elif cls is int:
            out[key] = float(item)
        else:
            raise TypeError(f"expected number values, got {cls.__name__} for {key!r}")
    return out


_ABSENT: Final = object()


def compile_structure(cls: type[Any]) -> Callable[[dict[str, Any]], Any]:
    """Generate the fast structure function of one attrs event class."""
    attrs.resolve_types(cls)
    lines = ["def structure(o):"]
    args = []
    for index, field in enumerate(attrs.fields(cls)):
        x = f"a{index}"
        args.append(x)
        base, optional = field.type, False
        if typing.get_origin(base) in (types.UnionType, typing.Union):
            members = [m for m in typing.get_args(base) if m is not type(None)]
            base, optional = members[0], True
        check = _CHECKS[base].format(x=x)
        if field.default is attrs.NOTHING:
            lines.append(f"    {x} = o[{field.name!r}]")
            lines.append(f"    {check}")
            continue
        factory = isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
        if factory:
            # Absent (the common case): a fresh {} with no check; present: checked.
            lines.append(f"    {x} = o.get({field.name!r}, _ABSENT)")
            lines.append(f"    if {x} is _ABSENT:")
            lines.append(f"        {x} = {{}}")
            lines.append("    else:")
            lines.append("    " + "    " + check.replace("\n", "\n    "))
            continue
        default = repr(field.default)
        lines.append(f"    {x} = o.get({field.name!r}, {default})")
        guard = f"{x} is not None and " if optional or field.default is None else ""
        if guard:
            lines.append(f"    if {x} is not None:")
            lines.append("    " + "    " + check.replace("\n", "\n    "))
        else:
            lines.append(f"    {check}")
    # Build the frozen instance through its slot descriptors: attrs' __init__
    # goes through object.__setattr__ per field, about twice the cost.
    lines.append("    e = _new(cls)")
    setters: dict[str, Any] = {}
    for index, (x, field) in enumerate(zip(args, attrs.fields(cls), strict=True)):
        setters[f"_set{index}"] = getattr(cls, field.name).__set__  # slots, own or inherited
        lines.append(f"    _set{index}(e, {x})")
    lines.append("    return e")
    namespace: dict[str, Any] = {
        "cls": cls,
        "_new": object.__new__,
        "_check_map": _check_map,
        "_float_map": _float_map,
        "_ABSENT": _ABSENT,
        **setters,
    }
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from our own attrs fields
    return namespace["structure"]  # type: ignore[no-any-return]
