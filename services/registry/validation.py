"""Checks of what users save: names, code, settings schemas, setting values, batching, filters.

Pure functions; each raises `InvalidArgument` naming the field and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from google.protobuf import json_format, struct_pb2

from eventfn_api.type.v1 import types_pb2
from services.common.errors import FieldViolation, InvalidArgument
from services.filters import CompiledFilter, exceeded, texts_exceeded
from services.registry.secrets import MASK, SEALED_KEY, is_sealed
from services.runtime import settings_schema as schema
from services.runtime.model import SyntaxProblem

MAX_CODE_BYTES = 5 * 1024 * 1024
# An instance's setting values, encoded: with its code and filters, an instance's
# configuration stays far under what the data plane's watchers accept in one message (16 MiB).
MAX_SETTINGS_BYTES = 256 * 1024
MAX_NAME = 100
# A function's description, and a version's settings definitions as stored: kept with every
# function or version, so bounded (a 4 MB description per save grew the database unchecked).
MAX_DESCRIPTION = 4000
MAX_SCHEMA_BYTES = 64 * 1024
BATCH_SIZE_DEFAULT, BATCH_SIZE_MAX = 20, 400
BATCH_WAIT_DEFAULT_MS, BATCH_WAIT_MAX_MS = 10_000, 60_000
TIMEOUT_DEFAULT_MS, TIMEOUT_MIN_MS, TIMEOUT_MAX_MS = 5_000, 100, 60_000


SyntaxChecker = Callable[[str], SyntaxProblem | None]
# Raises ValueError (the filter language's FilterSyntaxError) for a filter that does not parse.
FilterChecker = Callable[[str], CompiledFilter]


def required(field: str, value: str) -> str:
    """Return a required id, or raise INVALID_ARGUMENT naming the field when it is empty."""
    if not value:
        raise InvalidArgument.field(field, "required")
    return value


def check_update_mask(mask: Any, allowed: frozenset[str]) -> set[str]:
    """Return the paths of an update mask; INVALID_ARGUMENT when empty or naming others."""
    paths = set(mask.paths)
    if not paths:
        raise InvalidArgument.field("update_mask", "required: name the fields to change")
    if unknown := paths - allowed:
        raise InvalidArgument.field(
            "update_mask",
            f"cannot change {', '.join(sorted(unknown))}; changeable: {', '.join(sorted(allowed))}",
        )
    return paths


def check_name(field: str, value: str) -> str:
    """Return the trimmed display name, or raise when empty, too long or with control chars."""
    name = value.strip()
    if not name:
        raise InvalidArgument.field(field, "must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidArgument.field(field, f"must be at most {MAX_NAME} characters")
    if any(ord(c) < 32 for c in name):
        raise InvalidArgument.field(field, "must not contain control characters")
    return name


def check_code(code: str, syntax: SyntaxChecker) -> None:
    """Reject code over 5 MB or that does not parse as a classic script."""
    size = len(code.encode())
    if size > MAX_CODE_BYTES:
        raise InvalidArgument.field(
            "code", f"is {size} bytes; the limit is {MAX_CODE_BYTES} bytes (5 MB)"
        )
    problem = syntax(code)
    if problem is not None:
        raise InvalidArgument.field(
            "code",
            f"JavaScript syntax error at line {problem.line}, column {problem.column}: "
            f"{problem.message}",
        )


def check_description(field: str, value: str) -> None:
    """Raise when a description is longer than MAX_DESCRIPTION characters."""
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument.field(field, f"is {len(value)} characters; at most {MAX_DESCRIPTION}")


def check_setting_definitions(
    settings: Sequence[types_pb2.SettingDefinition],
) -> list[dict[str, Any]]:
    """Validate a settings schema, reporting every bad definition; return its stored form."""
    # Their size as sent first, with room for the stored form's own: each is checked in Python.
    sent = sum(s.ByteSize() for s in settings)
    _fits("settings", "the definitions", "a version's", sent, MAX_SCHEMA_BYTES, sent=True)
    rows = [
        {
            "label": s.label,
            "name": s.name,
            "type": int(s.type),
            "description": s.description,
            "required": s.required,
            "encrypted": s.encrypted,
        }
        for s in settings
    ]
    problems = schema.check_definitions(rows)
    if problems:
        raise InvalidArgument(
            "invalid settings definitions", [FieldViolation(p.field, p.message) for p in problems]
        )
    stored = [
        row | {"type": schema.TYPE_NUMBERS[str(row["type"])]}
        for row in schema.normal_definitions(rows)
    ]
    _within("settings", "the definitions", "a version's", stored, MAX_SCHEMA_BYTES)
    return stored


def settings_values(field: str, values: struct_pb2.Struct) -> dict[str, Any]:
    """Return setting values as sent, once their size as sent is within reach of the limit on
    their stored form (converting them is a Python step per value)."""
    _fits(field, "the values", "an instance's", values.ByteSize(), MAX_SETTINGS_BYTES, sent=True)
    return json_format.MessageToDict(values)


def _within(field: str, what: str, whose: str, value: object, limit: int) -> None:
    """Refuse a value whose JSON encoding (as stored) is over `limit` bytes."""
    _fits(field, what, whose, len(orjson.dumps(value)), limit)


def _fits(field: str, what: str, whose: str, size: int, limit: int, *, sent: bool = False) -> None:
    """Refuse `what`, of `size` bytes as stored, if over `limit`; or of `size` bytes as sent
    (encoded otherwise), if far over it."""
    if size > (2 * limit if sent else limit):
        raise InvalidArgument.field(
            field,
            f"{what} take {size} bytes{' as sent' if sent else ''}; {whose} may take at most "
            f"{limit} ({limit // 1024} KB)",
        )


def check_setting_values(
    settings_schema: Sequence[Mapping[str, Any]],
    values: Mapping[str, Any],
    *,
    kept_secrets: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Validate instance values against a version's schema; return the values to store.

    `kept_secrets` names settings whose stored value is encrypted, so that a masked value
    (or an absent one) keeps it: the schema's encrypted ones, and those a newer version no
    longer marks encrypted but whose value stays sealed (and reads masked).
    """
    declared = {s["name"] for s in settings_schema}
    kept = frozenset(name for name in kept_secrets & declared if values.get(name) in (None, MASK))
    checked = {k: v for k, v in values.items() if k not in kept}
    _within("settings", "the values", "an instance's", checked, MAX_SETTINGS_BYTES)
    violations = [
        FieldViolation(p.field, p.message)
        for p in schema.check_values(settings_schema, checked, kept=kept)
    ]
    # A stored object with this key is read as an encrypted value: none may come from a user.
    violations += [
        FieldViolation(
            f"settings.{name}",
            f"may not have a {SEALED_KEY!r} key (reserved: the registry stores encrypted "
            "values in that form)",
        )
        for name, value in checked.items()
        if is_sealed(value)
    ]
    if violations:
        raise InvalidArgument("invalid settings values", violations)
    return schema.given_values(settings_schema, checked)


def check_batching(
    batch_size: int | None, batch_wait_ms: int | None, timeout_ms: int | None
) -> tuple[int, int, int]:
    """Check batching and timeout values; None (not given) takes the default."""
    size = BATCH_SIZE_DEFAULT if batch_size is None else batch_size
    wait = BATCH_WAIT_DEFAULT_MS if batch_wait_ms is None else batch_wait_ms
    timeout = TIMEOUT_DEFAULT_MS if timeout_ms is None else timeout_ms
    violations = []
    if not 1 <= size <= BATCH_SIZE_MAX:
        violations.append(
            FieldViolation("instance.batch_size", f"must be 1..{BATCH_SIZE_MAX}, got {size}")
        )
    if not 0 <= wait <= BATCH_WAIT_MAX_MS:
        violations.append(
            FieldViolation(
                "instance.batch_wait", f"must be 0s..{BATCH_WAIT_MAX_MS // 1000}s, got {wait}ms"
            )
        )
    if not TIMEOUT_MIN_MS <= timeout <= TIMEOUT_MAX_MS:
        violations.append(
            FieldViolation(
                "instance.timeout",
                f"must be {TIMEOUT_MIN_MS}ms..{TIMEOUT_MAX_MS // 1000}s, got {timeout}ms",
            )
        )
    if violations:
        raise InvalidArgument("invalid batching or timeout", violations)
    return size, wait, timeout


RETRY_WINDOW_RANGE = (60, 86_400)
RETRY_MAX_DELAY_RANGE = (1, 3_600)


def check_retry(window_seconds: int, max_delay_seconds: int) -> tuple[int, int]:
    """Check an instance's retry overrides in seconds; 0 keeps the deployment's default."""
    violations = []
    for field, value, (low, high) in (
        ("instance.retry_window", window_seconds, RETRY_WINDOW_RANGE),
        ("instance.retry_max_delay", max_delay_seconds, RETRY_MAX_DELAY_RANGE),
    ):
        if value != 0 and not low <= value <= high:
            violations.append(
                FieldViolation(field, f"must be unset (default) or {low}s..{high}s, got {value}s")
            )
    if violations:
        raise InvalidArgument("invalid retry settings", violations)
    return window_seconds, max_delay_seconds


def check_filters(filters: Sequence[str], parse: FilterChecker) -> list[str]:
    """Check that every destination filter parses (the error names its index and position)
    and that together they are within an instance's bounds (`services.filters.limits`)."""
    if (why := texts_exceeded(filters)) is not None:  # before parsing any
        raise InvalidArgument.field("instance.filters", why)
    parsed = []
    for i, text in enumerate(filters):
        try:
            parsed.append(parse(text))
        except InvalidArgument:
            raise
        except ValueError as error:  # the parser's own error carries line and column
            raise InvalidArgument.field(f"instance.filters[{i}]", str(error)) from error
    if (why := exceeded(filters, parsed)) is not None:
        raise InvalidArgument.field("instance.filters", why)
    return list(filters)


def check_page_size(page_size: int, default: int = 50) -> int:
    """Apply the default page size and bound it to 1..500."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(page_size or default, 500)
