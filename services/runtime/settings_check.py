"""Check instance settings against a function's declared settings schema (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventfn.type.v1 import types_pb2

SETTING_TYPES = frozenset({"string", "boolean", "text-map", "string-array"})
# The API's setting types by the names used here.
TYPE_NAMES = {
    types_pb2.SETTING_TYPE_STRING: "string",
    types_pb2.SETTING_TYPE_BOOLEAN: "boolean",
    types_pb2.SETTING_TYPE_TEXT_MAP: "text-map",
    types_pb2.SETTING_TYPE_STRING_ARRAY: "string-array",
}


def fits(kind: str, value: object) -> bool:
    """Tell whether a value has the shape of a setting type (string, boolean, ...)."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "text-map":
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if kind == "string-array":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return False


def missing(value: object) -> bool:
    """Tell whether a setting value counts as not given."""
    return value is None or value == "" or value == [] or value == {}


def check_settings(
    schema: Sequence[Mapping[str, object]], settings: Mapping[str, object]
) -> list[str]:
    """Return what is wrong with `settings` under `schema` (empty when they fit)."""
    problems: list[str] = []
    for spec in schema:
        name = str(spec.get("name"))
        kind = str(spec.get("type", "string"))
        if kind not in SETTING_TYPES:
            problems.append(f"setting {name!r} declares unknown type {kind!r}")
            continue
        value = settings.get(name)
        if missing(value):
            if spec.get("required"):
                problems.append(f"required setting {name!r} has no value; set it on the instance")
            continue
        if not fits(kind, value):
            problems.append(f"setting {name!r} must be a {kind}, got {type(value).__name__}")
    return problems
