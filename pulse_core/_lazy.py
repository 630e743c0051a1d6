"""Lazy package exports: a module ``__getattr__`` that imports a name on first use.

Used by :mod:`pulse_core` and :mod:`pulse_transports.integrations`, whose
public names live in submodules that are costly to import (or need optional
packages). Pure: imports only what it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *package*: ``name`` comes from ``package.where[name]``.

    The value is cached in *namespace* (the package's globals), so each name
    is imported once.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__
