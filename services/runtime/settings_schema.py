"""Function settings in one place: the setting types, schema checks, value checks, and the
parsing of a command line's `name=value` by the setting's declared type (pure functions).

The registry checks what is saved with it, the executor and the runtime's preview check what
a run gets, and the CLI parses what a user types. A setting type is named here by its kind:
"string", "boolean", "text-map" or "string-array"; `parse_type` also reads Segment's names
("array", "text map", the Public API's "TEXT_MAP") and the API's enum numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eventfn_api.type.v1 import types_pb2

STRING = "string"
BOOLEAN = "boolean"
TEXT_MAP = "text-map"
STRING_ARRAY = "string-array"
KINDS = (STRING, BOOLEAN, TEXT_MAP, STRING_ARRAY)
# The API's setting types by kind, and back.
TYPE_NAMES: dict[int, str] = {
    types_pb2.SETTING_TYPE_STRING: STRING,
    types_pb2.SETTING_TYPE_BOOLEAN: BOOLEAN,
    types_pb2.SETTING_TYPE_TEXT_MAP: TEXT_MAP,
    types_pb2.SETTING_TYPE_STRING_ARRAY: STRING_ARRAY,
}
TYPE_NUMBERS: dict[str, int] = {kind: number for number, kind in TYPE_NAMES.items()}
# Our names, Segment's editor labels ("Text Map", "Array") and its Public API's enum values
# ("TEXT_MAP", "ARRAY"), after `_normal_type_name`.
_TYPE_ALIASES = {
    "string": STRING,
    "boolean": BOOLEAN,
    "bool": BOOLEAN,
    "text map": TEXT_MAP,
    "textmap": TEXT_MAP,
    "map": TEXT_MAP,
    "string array": STRING_ARRAY,
    "stringarray": STRING_ARRAY,
    "array": STRING_ARRAY,
}
ACCEPTED_TYPES = "string, boolean, text map (or map), array (or string array)"
DEFINITION_KEYS = ("label", "name", "type", "description", "required", "encrypted")
MAX_LABEL = 100
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_IDENTIFIER_RULE = (
    "a valid JavaScript identifier (letters, digits, _ or $, not starting with a digit, "
    "not a keyword)"
)
_RESERVED = frozenset(
    "break case catch class const continue debugger default delete do else export extends "
    "false finally for function if import in instanceof new null return super switch this "
    "throw true try typeof var void while with yield let static enum await".split()
)
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong and where: `settings[2].type`, `settings.apiKey`, `--set endpoint`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# -- types -----------------------------------------------------------------------------------


def _normal_type_name(text: str) -> str:
    name = re.sub(r"[\s_\-]+", " ", text.strip().lower())
    return name.removeprefix("setting type ")


def parse_type(value: object) -> str | None:
    """Return the kind a setting type means (our name, Segment's, the API's number), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return TYPE_NAMES.get(value)
    if isinstance(value, str):
        return _TYPE_ALIASES.get(_normal_type_name(value))
    return None


def json_type(value: object) -> str:
    """Name a JSON value's type as people say it: a string, a number, an object, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


# -- schemas ---------------------------------------------------------------------------------


def _definition_problems(row: Mapping[str, object], path: str) -> list[Problem]:
    problems = [
        Problem(f"{path}.{key}", f"is not a setting field; use {', '.join(DEFINITION_KEYS)}")
        for key in row
        if key not in DEFINITION_KEYS
    ]
    name = row.get("name")
    if "name" not in row:
        problems.append(
            Problem(f"{path}.name", f"is missing; name the setting: {_IDENTIFIER_RULE}")
        )
    elif not isinstance(name, str):
        problems.append(
            Problem(f"{path}.name", f"must be {_IDENTIFIER_RULE}, got {json_type(name)}")
        )
    elif not _IDENTIFIER.match(name) or name in _RESERVED:
        problems.append(Problem(f"{path}.name", f"{name!r} is not {_IDENTIFIER_RULE}"))
    kind = row.get("type")
    if "type" in row and parse_type(kind) is None:
        problems.append(
            Problem(f"{path}.type", f"unknown setting type {kind!r}; use {ACCEPTED_TYPES}")
            if isinstance(kind, str | int) and not isinstance(kind, bool)
            else Problem(f"{path}.type", f"must be one of {ACCEPTED_TYPES}, got {json_type(kind)}")
        )
    label = row.get("label", "")
    if not isinstance(label, str) or len(label) > MAX_LABEL:
        problems.append(Problem(f"{path}.label", f"must be a string of at most {MAX_LABEL}"))
    if not isinstance(row.get("description", ""), str):
        problems.append(Problem(f"{path}.description", "must be a string"))
    for flag in ("required", "encrypted"):
        if not isinstance(row.get(flag, False), bool):
            problems.append(Problem(f"{path}.{flag}", "must be true or false"))
    return problems


def check_definitions(rows: Sequence[object], *, path: str = "settings") -> list[Problem]:
    """Return every problem of a settings schema, each bad definition and field named."""
    problems: list[Problem] = []
    seen: set[object] = set()
    for i, row in enumerate(rows):
        where = f"{path}[{i}]"
        if not isinstance(row, Mapping):
            problems.append(Problem(where, f"must be an object with {', '.join(DEFINITION_KEYS)}"))
            continue
        problems += _definition_problems(row, where)
        name = row.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(Problem(f"{where}.name", f"{name!r} is declared twice"))
        seen.add(name)
    return problems


def normal_definitions(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Return checked definitions in one form: every field present, the type as its kind."""
    return [
        {
            "label": str(row.get("label") or row["name"]),
            "name": str(row["name"]),
            "type": parse_type(row.get("type", STRING)) or STRING,
            "description": str(row.get("description", "")),
            "required": bool(row.get("required", False)),
            "encrypted": bool(row.get("encrypted", False)),
        }
        for row in rows
    ]


# -- values ----------------------------------------------------------------------------------


def missing(value: object) -> bool:
    """Tell whether a setting value counts as not given (null, "", [] or {})."""
    return value is None or value == "" or value == [] or value == {}


def value_problem(kind: str, value: object) -> str | None:
    """Return why a value does not fit a setting kind (naming a bad key or index), or None."""
    if kind == STRING:
        return None if isinstance(value, str) else f"must be a string, got {json_type(value)}"
    if kind == BOOLEAN:
        return None if isinstance(value, bool) else f"must be true or false, got {json_type(value)}"
    if kind == TEXT_MAP:
        if not isinstance(value, Mapping):
            return f"must be a text map (an object of strings), got {json_type(value)}"
        for key, item in value.items():
            if not isinstance(item, str):
                return f"must be a text map of strings: key {key!r} holds {json_type(item)}"
        return None
    if kind == STRING_ARRAY:
        if not isinstance(value, list):
            return f"must be an array of strings, got {json_type(value)}"
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return f"must be an array of strings: item [{i}] is {json_type(item)}"
        return None
    return f"has an unknown setting type {kind!r}"


def check_values(
    schema: Sequence[Mapping[str, object]],
    values: Mapping[str, object],
    *,
    undeclared: bool = True,
    kept: frozenset[str] = frozenset(),
) -> list[Problem]:
    """Return every problem of values under a schema (rows with name, type, required).

    `undeclared` reports values the schema does not declare; `kept` names settings whose
    value is kept from before (a stored secret), so their absence is no problem.
    """
    by_name = {str(s.get("name")): s for s in schema}
    problems: list[Problem] = []
    if undeclared:
        declared = ", ".join(sorted(by_name)) or "none"
        problems += [
            Problem(
                f"settings.{name}",
                f"is not declared by the function version; declared: {declared}",
            )
            for name in values
            if name not in by_name
        ]
    for name, spec in by_name.items():
        value = values.get(name)
        if missing(value):
            if spec.get("required") and name not in kept:
                problems.append(
                    Problem(f"settings.{name}", f"the required setting {name!r} is missing")
                )
            continue
        kind = parse_type(spec.get("type", STRING))
        problem = value_problem(kind or "", value)
        if problem:
            problems.append(Problem(f"settings.{name}", problem))
    return problems


def given_values(
    schema: Sequence[Mapping[str, object]], values: Mapping[str, object]
) -> dict[str, object]:
    """Return the values a schema declares that are given (not null, "", [] or {})."""
    declared = {str(s.get("name")) for s in schema}
    return {k: v for k, v in values.items() if k in declared and not missing(v)}


def check_settings(
    schema: Sequence[Mapping[str, object]], settings: Mapping[str, object]
) -> list[str]:
    """Return what is wrong with a run's settings under its schema, one line each."""
    return [str(p) for p in check_values(schema, settings, undeclared=False)]


# -- the command line --------------------------------------------------------------------------


def split_assignment(text: str) -> tuple[str, str]:
    """Split `name=value` at the first `=`; raise ValueError without a name or an `=`."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"takes name=value, got {text!r}")
    return name.strip(), value


def parse_value(kind: str, text: str) -> object:
    """Read a command-line value as its setting's kind; raise ValueError saying why not.

    string: the text as is. boolean: true/false, yes/no, on/off, 1/0. text-map: a JSON object
    of strings. string-array: a JSON array of strings, or items separated by commas. An empty
    text is the empty value of the kind, which leaves the setting unset.
    """
    if kind == STRING:
        return text
    word = text.strip()
    if kind == BOOLEAN:
        if word.lower() in _TRUE:
            return True
        if word.lower() in _FALSE:
            return False
        if not word:
            return None
        raise ValueError(f"must be true or false, got {text!r}")
    if kind == TEXT_MAP:
        if not word:
            return {}
        value = _json(word, 'a JSON object of strings, e.g. {"X-Team": "growth"}')
    elif kind == STRING_ARRAY:
        if not word:
            return []
        if not word.startswith("["):
            return [item.strip() for item in text.split(",")]
        value = _json(word, 'a JSON array of strings, e.g. ["a", "b"], or a,b')
    else:
        raise ValueError(f"has an unknown setting type {kind!r}")
    problem = value_problem(kind, value)
    if problem:
        raise ValueError(problem)
    return value


def _json(text: str, expected: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"must be {expected}: {error.msg} at column {error.colno}") from None


def format_value(kind: str, value: object) -> str:
    """Write a value of a kind the way `parse_value` reads it back."""
    if kind == STRING:
        return str(value)
    if kind == BOOLEAN:
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def parse_assignments(
    schema: Sequence[Mapping[str, object]], pairs: Sequence[str]
) -> tuple[dict[str, object], list[Problem]]:
    """Parse `name=value` texts by the kinds the schema declares; report every bad one."""
    kinds = {str(s.get("name")): parse_type(s.get("type", STRING)) for s in schema}
    values: dict[str, object] = {}
    problems: list[Problem] = []
    for pair in pairs:
        try:
            name, text = split_assignment(pair)
        except ValueError as error:
            problems.append(Problem("--set", str(error)))
            continue
        kind = kinds.get(name)
        if name not in kinds or kind is None:
            declared = ", ".join(sorted(kinds)) or "none"
            problems.append(
                Problem(f"--set {name}", f"is not declared by the version; declared: {declared}")
            )
            continue
        try:
            values[name] = parse_value(kind, text)
        except ValueError as error:
            problems.append(Problem(f"--set {name}", str(error)))
    return values, problems
