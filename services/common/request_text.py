"""Control characters in request strings: found by walking any message by its descriptor.

Every string of every request goes through `check_request_text` before a servicer sees it
(see `rpc.ServerGate`), so a NUL never reaches PostgreSQL (which refuses it and used
to answer with the statement text) nor a log line. NUL and every other C0/C1 control
character (and DEL) are refused; tab, newline and carriage return are kept, because
free-text fields need them (code, event JSON, PEM keys in setting values). String values
and keys nested in `google.protobuf.Struct` / `Value` / `ListValue` and in map fields are
checked like top-level fields. `bytes` fields are not text and are not checked.

The walk runs before any servicer, so before a caller is known: a request holding more than
MAX_VALUES strings, messages and values (each a Python step, ≈ 1 µs) is refused, instead of
walked for seconds (8 million empty values fit in 16 MB; an instance's settings, at most
256 KB, hold about 60,000), and one over WALKED_ON_LOOP_BYTES is walked in a thread, so the
service's other calls go on meanwhile.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import FieldViolation, InvalidArgument

# C0 controls but tab (09), newline (0a) and carriage return (0d); DEL; C1 controls.
FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Enough to name the problem; a hostile request with a million bad strings gets no more.
MAX_VIOLATIONS = 20
MAX_VALUES = 200_000
WALKED_ON_LOOP_BYTES = 64 * 1024
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST = "google.protobuf.ListValue"
_WALKED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)


class _Found(Exception):
    """Stop the walk: enough violations were collected."""


def printable(text: str) -> str:
    """Escape the forbidden characters of `text`, e.g. for a field path made of a map key."""
    return FORBIDDEN.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _describe(match: re.Match[str]) -> str:
    char = ord(match.group())
    name = "NUL" if char == 0 else "a control character"
    return (
        f"contains {name} (U+{char:04X}) at position {match.start()}; control characters "
        "are not allowed (only tab, newline and carriage return)"
    )


class _TooMany(Exception):
    """Stop the walk: the request holds more than MAX_VALUES values."""


class _Walk:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self.left = MAX_VALUES

    def step(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _TooMany

    def text(self, path: str, value: str) -> None:
        self.step()
        match = FORBIDDEN.search(value)
        if match is None:
            return
        self.violations.append(FieldViolation(path, _describe(match)))
        if len(self.violations) >= MAX_VIOLATIONS:
            raise _Found

    def key(self, path: str, key: str) -> None:
        match = FORBIDDEN.search(key)
        if match is not None:
            self.text(f"{path} (key {printable(key)!r})", key)

    def message(self, path: str, message: Message) -> None:
        self.step()
        name = message.DESCRIPTOR.full_name
        if name == _STRUCT:
            self.struct(path, message)
        elif name == _VALUE:
            self.value(path, message)
        elif name == _LIST:
            for i, item in enumerate(message.values):  # type: ignore[attr-defined]
                self.value(f"{path}[{i}]", item)
        else:
            for field, value in message.ListFields():
                self.field(_join(path, field.name), field, value)

    def struct(self, path: str, struct: Any) -> None:
        for key, item in struct.fields.items():
            self.key(path, key)
            self.value(_join(path, printable(key)), item)

    def value(self, path: str, value: Any) -> None:
        self.step()
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            self.text(path, value.string_value)
        elif kind == "struct_value":
            self.struct(path, value.struct_value)
        elif kind == "list_value":
            self.message(path, value.list_value)

    def field(self, path: str, field: FieldDescriptor, value: Any) -> None:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            self.map(path, entry, value)
        elif field.type not in _WALKED:
            return  # numbers, booleans, enums, bytes: no text
        elif field.is_repeated:
            for i, item in enumerate(value):
                self.single(f"{path}[{i}]", field, item)
        else:
            self.single(path, field, value)

    def map(self, path: str, entry: Descriptor, value: Any) -> None:
        key_field = entry.fields_by_name["key"]
        value_field = entry.fields_by_name["value"]
        for key, item in value.items():
            if key_field.type == FieldDescriptor.TYPE_STRING:
                self.key(path, key)
            self.single(f"{path}[{printable(str(key))!r}]", value_field, item)

    def single(self, path: str, field: FieldDescriptor, value: Any) -> None:
        if field.type == FieldDescriptor.TYPE_STRING:
            self.text(path, value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            self.message(path, value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def control_character_violations(message: Message) -> list[FieldViolation]:
    """Name every string of `message` (nested ones included) holding a control character;
    raise InvalidArgument if it holds more than MAX_VALUES values."""
    walk = _Walk()
    try:
        walk.message("", message)
    except _Found:
        pass
    except _TooMany:
        raise InvalidArgument(
            f"the request holds more than {MAX_VALUES} strings, messages and values, the most "
            "a request may"
        ) from None
    return walk.violations


def check_request_text(message: Message) -> None:
    """Raise InvalidArgument naming each field of the request that holds a control character."""
    violations = control_character_violations(message)
    if violations:
        fields = ", ".join(v.field for v in violations)
        raise InvalidArgument(
            f"control characters are not allowed in {fields}: only tab, newline and carriage "
            "return may appear in text",
            violations,
        )


async def check_request_text_aside(message: Message) -> None:
    """`check_request_text`, in a thread for a large request (the loop serves others)."""
    if message.ByteSize() > WALKED_ON_LOOP_BYTES:
        await asyncio.to_thread(check_request_text, message)
    else:
        check_request_text(message)
