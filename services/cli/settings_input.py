"""What users give the CLI about settings: schema files, `--settings` value files, `--set`.

The checks themselves live in `services.runtime.settings_schema`; here they meet files and
the registry (which version's schema a `--set` is parsed by).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from google.protobuf import struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.type.v1 import types_pb2
from services.cli.client import fail, metadata, read_json
from services.runtime import settings_schema as schema


def fail_with(headline: str, problems: Sequence[schema.Problem]) -> NoReturn:
    """Fail with a headline and one line per problem."""
    fail("\n".join([headline, *(f"  {p}" for p in problems)]))


def read_schema(path: Path | None) -> list[types_pb2.SettingDefinition]:
    """Read a settings schema file (a JSON list of definitions), reporting every bad one."""
    if path is None:
        return []
    rows = read_json(path, "settings schema")
    if not isinstance(rows, list):
        fail(
            f"{path} must hold a JSON list of settings, e.g. "
            '[{"name": "apiKey", "label": "API Key", "type": "string", "encrypted": true}]'
        )
    problems = schema.check_definitions(rows)
    if problems:
        fail_with(f"{path}: {len(problems)} problem(s) in the settings schema", problems)
    return [
        types_pb2.SettingDefinition(
            label=str(row["label"]),
            name=str(row["name"]),
            type=schema.TYPE_NUMBERS[str(row["type"])],  # type: ignore[arg-type]
            description=str(row["description"]),
            required=bool(row["required"]),
            encrypted=bool(row["encrypted"]),
        )
        for row in schema.normal_definitions(rows)
    ]


def definitions_as_rows(definitions: Sequence[types_pb2.SettingDefinition]) -> list[dict]:
    """Return a version's setting definitions as schema rows (name, type, required)."""
    return [{"name": d.name, "type": int(d.type), "required": d.required} for d in definitions]


def read_values(path: Path | None) -> dict[str, Any]:
    """Read a JSON object of setting values from a file (empty without a file)."""
    if path is None:
        return {}
    values = read_json(path, "settings values")
    if not isinstance(values, dict):
        fail(f'{path} must hold a JSON object of setting values, e.g. {{"endpoint": "…"}}')
    return values


def parse_sets(
    definitions: Sequence[types_pb2.SettingDefinition],
    pairs: Sequence[str] | None,
    version: str,
    *,
    hint: str = "",
) -> dict[str, Any]:
    """Parse `--set name=value` by the types the version declares; fail naming every bad one."""
    values, problems = schema.parse_assignments(definitions_as_rows(definitions), pairs or [])
    if problems:
        undeclared = hint and any("is not declared" in p.message for p in problems)
        fail_with(
            f"{len(problems)} bad --set value(s) for version {version}"
            + (f" ({hint})" if undeclared else ""),
            problems,
        )
    return values


def version_settings(r: Any, version: str) -> Sequence[types_pb2.SettingDefinition]:
    """Return the setting definitions of a saved version (its name)."""
    resp = r.GetFunctionVersion(pb.GetFunctionVersionRequest(name=version), metadata=metadata())
    return resp.version.settings


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """Build a Struct of setting values."""
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out


def kind_name(setting_type: int) -> str:
    """Name a setting type for tables."""
    return schema.TYPE_NAMES.get(setting_type, "?")
