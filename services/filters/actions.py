"""Destination filters: compile a condition and an action once, apply them per event.

A filter is stored as a JSON object (its text form, `CompiledFilter.to_text()`):

    {"if": "<condition>", "action": "drop"}
    {"if": "<condition>", "action": "sample", "percent": 10}
    {"if": "<condition>", "action": "drop_fields", "fields": ["properties.email", "context.ip"]}
    {"if": "<condition>", "action": "allow_fields", "fields": ["properties.total"]}

A bare condition (text that is not a JSON object) is shorthand for a drop filter.

- `if` is a condition in the language of `services.filters.fql` (default `true`);
  the action applies only to events for which it holds, others pass unchanged.
- `drop` drops the event.
- `sample` keeps `percent` % (0 to 100) of the events, chosen by a hash of the
  `messageId` salted with the filter, so a client's retry gets the same decision.
- `drop_fields` removes the listed keys; each field is a path under `properties`,
  `traits` or `context` (`properties.address.city` removes only `city`).
- `allow_fields` keeps only the listed keys of `properties` and `traits`; a container
  no field names is left as it is (list `properties.none` to empty it).

Filters apply in order; the first drop ends the chain. The input event is never
mutated: field actions copy what they change, and an unchanged event is returned as is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from typing import Literal as TypingLiteral

import orjson

from services.filters.conditions import Test, compile_condition
from services.filters.errors import FilterSyntaxError
from services.filters.fql import (
    Condition,
    Path,
    parse_condition,
    parse_path,
    print_condition,
    print_path,
)

Event = dict[str, Any]
Action = TypingLiteral["drop", "drop_fields", "allow_fields", "sample"]
ACTIONS: tuple[Action, ...] = ("drop", "drop_fields", "allow_fields", "sample")
DROPPABLE_ROOTS = frozenset({"properties", "traits", "context"})
ALLOWABLE_ROOTS = frozenset({"properties", "traits"})
_KEYS = frozenset({"if", "action", "fields", "percent"})


# --- actions --------------------------------------------------------------------------

Trie = dict[str, "Trie | None"]


def _trie(paths: Sequence[Path]) -> Trie:
    """Index paths by key; a leaf (None) covers everything below it."""
    root: Trie = {}
    for path in paths:
        node = root
        for key in path.keys[:-1]:
            child = node.setdefault(key, {})
            if child is None:
                break
            node = child
        else:
            node[path.keys[-1]] = None
    return root


def _without(node: dict[str, Any], trie: Trie) -> dict[str, Any]:
    """Return the object minus the trie's leaves, copying only what changes."""
    changed: dict[str, Any] | None = None
    for key, below in trie.items():
        if key not in node:
            continue
        if below is None:
            changed = dict(node) if changed is None else changed
            del changed[key]
            continue
        child = node[key]
        if type(child) is dict:
            pruned = _without(child, below)
            if pruned is not child:
                changed = dict(node) if changed is None else changed
                changed[key] = pruned
    return node if changed is None else changed


def _only(node: dict[str, Any], trie: Trie) -> dict[str, Any]:
    """Return a new object holding only the trie's paths of `node`."""
    kept: dict[str, Any] = {}
    for key, below in trie.items():
        if key in node:
            child = node[key]
            if below is None:
                kept[key] = child
            elif type(child) is dict:
                kept[key] = _only(child, below)
    return kept


def _sample_threshold(percent: float) -> int:
    """Return the 64-bit hash bound under which an event is kept."""
    return int(percent * 2**64 / 100) if percent < 100 else 2**64


@dataclass(frozen=True, slots=True, eq=False)
class CompiledFilter:
    """A parsed destination filter, ready to apply to events."""

    condition: Condition
    action: Action
    fields: tuple[Path, ...]
    percent: float | None
    test: Test
    _apply: Callable[[Event], Event | None]

    def apply(self, event: Event) -> Event | None:
        """Return the event as this filter leaves it, or None when dropped."""
        return self._apply(event)

    def to_text(self) -> str:
        """Return the canonical stored form; parse_filter reads it back."""
        spec: dict[str, Any] = {"if": print_condition(self.condition), "action": self.action}
        if self.fields:
            spec["fields"] = [print_path(path) for path in self.fields]
        if self.percent is not None:
            spec["percent"] = self.percent
        return orjson.dumps(spec).decode()


def build_filter(
    condition: str | Condition,
    action: Action,
    *,
    fields: Sequence[str | Path] = (),
    percent: float | None = None,
) -> CompiledFilter:
    """Compile a filter from its parts, raising FilterSyntaxError when they are wrong."""
    ast = parse_condition(condition) if isinstance(condition, str) else condition
    paths = tuple(parse_path(f) if isinstance(f, str) else f for f in fields)
    _check_parts(action, paths, percent)
    test = compile_condition(ast)
    apply = _compile_action(test, action, paths, percent, print_condition(ast))
    return CompiledFilter(ast, action, paths, percent, test, apply)


def _check_parts(action: str, paths: tuple[Path, ...], percent: float | None) -> None:
    """Refuse an action with missing, superfluous or out-of-range parts."""
    if action not in ACTIONS:
        raise FilterSyntaxError(f"`action` must be one of {', '.join(ACTIONS)}", 1, 1)
    if action in ("drop_fields", "allow_fields"):
        roots = DROPPABLE_ROOTS if action == "drop_fields" else ALLOWABLE_ROOTS
        if not paths:
            raise FilterSyntaxError(f"`{action}` needs a non-empty `fields` list", 1, 1)
        for path in paths:
            if len(path.keys) < 2 or path.keys[0] not in roots:
                raise FilterSyntaxError(
                    f"`{action}` fields must be paths under {' or '.join(sorted(roots))}, "
                    f"got {print_path(path)!r}",
                    1,
                    1,
                )
    elif paths:
        raise FilterSyntaxError("`fields` is only for drop_fields and allow_fields", 1, 1)
    if action == "sample":
        if percent is None or not 0 <= percent <= 100:
            raise FilterSyntaxError("`sample` needs `percent`, a number from 0 to 100", 1, 1)
    elif percent is not None:
        raise FilterSyntaxError("`percent` is only for sample", 1, 1)


def _compile_action(
    test: Test, action: Action, paths: tuple[Path, ...], percent: float | None, salt: str
) -> Callable[[Event], Event | None]:
    """Build the per-event function of one filter."""
    if action == "drop":
        return lambda e: None if test(e) else e
    if action == "sample":
        threshold = _sample_threshold(cast(float, percent))
        key = hashlib.blake2b(f"{action}:{percent}:{salt}".encode(), digest_size=32).digest()

        def sample(e: Event) -> Event | None:
            if not test(e):
                return e
            message_id = str(e.get("messageId", "")).encode("utf-8", "surrogatepass")
            digest = hashlib.blake2b(message_id, digest_size=8, key=key).digest()
            return e if int.from_bytes(digest, "big") < threshold else None

        return sample
    trie = _trie(paths)
    if action == "drop_fields":
        return lambda e: _without(e, trie) if test(e) else e

    def allow(e: Event) -> Event | None:
        if not test(e):
            return e
        kept = dict(e)
        for root, below in trie.items():
            value = e.get(root)
            if type(value) is dict and below is not None:
                kept[root] = _only(value, below)
        return kept

    return allow


def apply_filters(filters: Sequence[CompiledFilter], event: Event) -> Event | None:
    """Run the filters in order; return the resulting event, or None once one drops it."""
    for compiled in filters:
        result = compiled.apply(event)
        if result is None:
            return None
        event = result
    return event


# --- stored text form -----------------------------------------------------------------


def _position_of(text: str, key: str) -> tuple[int, int]:
    """Locate a key of the JSON text (its quoted name), or the start when not found."""
    at = text.find(orjson.dumps(key).decode())
    if at < 0:
        return 1, 1
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def parse_filter(text: str) -> CompiledFilter:
    """Parse a filter's stored text, raising FilterSyntaxError with the position.

    Text that is not a JSON object is a bare condition: shorthand for a drop filter, so
    `event = "Order Completed"` means {"if": "event = \"Order Completed\"", "action": "drop"}.
    """
    if not text.lstrip().startswith(("{", "[")):
        try:
            ast = parse_condition(text)
        except FilterSyntaxError as exc:
            raise FilterSyntaxError(
                f"in the condition: {exc.reason} (a filter is a condition, which drops the "
                'events it matches, or a JSON object such as {"if": "...", "action": "drop"})',
                exc.line,
                exc.column,
            ) from None
        return build_filter(ast, "drop")
    try:
        spec = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FilterSyntaxError(
            f"filter is not valid JSON: {exc.msg}", max(exc.lineno, 1), max(exc.colno, 1)
        ) from None
    if type(spec) is not dict:
        raise FilterSyntaxError(
            'a filter is a JSON object, e.g. {"if": "...", "action": "drop"}', 1, 1
        )
    for key in spec:
        if key not in _KEYS:
            raise FilterSyntaxError(
                f"unknown key {key!r}; a filter has {', '.join(sorted(_KEYS))}",
                *_position_of(text, key),
            )
    condition = spec.get("if", "true")
    if type(condition) is not str:
        raise FilterSyntaxError("`if` must be a string", *_position_of(text, "if"))
    try:
        ast = parse_condition(condition)
    except FilterSyntaxError as exc:
        raise FilterSyntaxError(f"in `if`: {exc.reason}", exc.line, exc.column) from None
    action = spec.get("action")
    if action not in ACTIONS:
        raise FilterSyntaxError(
            f"`action` must be one of {', '.join(ACTIONS)}", *_position_of(text, "action")
        )
    raw_fields = spec.get("fields", [])
    if type(raw_fields) is not list or any(type(f) is not str for f in raw_fields):
        raise FilterSyntaxError("`fields` must be a list of strings", *_position_of(text, "fields"))
    paths: list[Path] = []
    for index, field in enumerate(raw_fields):
        try:
            paths.append(parse_path(field))
        except FilterSyntaxError as exc:
            raise FilterSyntaxError(
                f"in fields[{index}]: {exc.reason}", exc.line, exc.column
            ) from None
    percent = spec.get("percent")
    if percent is not None and type(percent) not in (int, float):
        raise FilterSyntaxError("`percent` must be a number", *_position_of(text, "percent"))
    try:
        return build_filter(ast, cast(Action, action), fields=paths, percent=percent)
    except FilterSyntaxError as exc:
        key = "percent" if "percent" in exc.reason else "fields"
        raise FilterSyntaxError(exc.reason, *_position_of(text, key)) from None
