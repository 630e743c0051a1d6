"""The PULSE JSON Schemas, loaded at run time from the one copy in ``specs/schema``.

This package owns finding and loading the schemas; it holds no copy of them.
``specs/schema/*.schema.json`` in the repository is the only source. It is
looked up, in order:

1. ``pulse_transports/schema/json/`` inside the installed package -- where a
   wheel build puts the files (hatch ``force-include`` of ``specs/schema``);
2. ``specs/schema/`` next to the package, found from this file's path
   (``<repo>/pulse_transports/schema/__init__.py`` -> ``<repo>/specs/schema``):
   an editable install or a source checkout;
3. the folder named by ``PULSE_SCHEMA_DIR``, which wins over both when set.

Must never import the CLI.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson

from pulse_core.errors import PulseError

#: Environment variable naming a folder with ``*.schema.json`` files.
ENV_SCHEMA_DIR: Final = "PULSE_SCHEMA_DIR"
_HERE: Final = Path(__file__).resolve().parent


class SchemaNotFound(PulseError):
    """The schema files are not where an installed or checked-out PULSE keeps them."""


def candidates() -> list[Path]:
    """The folders searched for schemas, in order."""
    found = []
    override = os.environ.get(ENV_SCHEMA_DIR)
    if override:
        found.append(Path(override))
    found.append(_HERE / "json")
    found.append(_HERE.parent.parent / "specs" / "schema")
    return found


def schema_dir() -> Path:
    """The folder holding ``event.schema.json`` and its siblings.

    Raises:
        SchemaNotFound: naming every folder that was searched.
    """
    for folder in candidates():
        if (folder / "event.schema.json").is_file():
            return folder
    searched = ", ".join(str(p) for p in candidates())
    raise SchemaNotFound(f"PULSE JSON schemas not found (searched {searched})")


def schema_path(name: str = "event") -> Path:
    """The path of ``<name>.schema.json`` (``event``, ``cloudevent``, ``v1_snapshot``)."""
    return schema_dir() / f"{name}.schema.json"


def load_schema(name: str = "event") -> dict[str, Any]:
    """Load one schema as a dict.

    Raises:
        SchemaNotFound: if it is missing or not a JSON object.
    """
    path = schema_path(name)
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SchemaNotFound(f"cannot read schema {path}: {exc}") from None
    if not isinstance(value, dict):
        raise SchemaNotFound(f"schema {path} is not a JSON object")
    return value


@cache
def validator(name: str = "event") -> Any:
    """A ``jsonschema`` validator for one schema, with every sibling schema resolvable.

    Cross-schema ``$ref`` s (relative: ``event.schema.json`` against the ``$id``) resolve
    through a :mod:`referencing` registry of all the schemas in the folder.
    """
    import jsonschema  # type: ignore[import-untyped]  # no stubs shipped
    from referencing import Registry, Resource

    folder = schema_dir()
    resources = []
    for path in sorted(folder.glob("*.schema.json")):
        try:
            contents = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(contents, dict) and "$id" in contents:
            resources.append((contents["$id"], Resource.from_contents(contents)))
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry)
