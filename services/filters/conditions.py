"""Compile FQL condition ASTs into closures over events, evaluated without dispatch.

Semantics are those documented in `services.filters.fql`; compiled tests never raise,
whatever the event holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from services.filters.fql import (
    MISSING,
    And,
    Compare,
    Condition,
    Const,
    Contains,
    Exists,
    Literal,
    Match,
    Not,
    Operand,
    Or,
    Path,
)

Test = Callable[[Mapping[str, Any]], bool]
Getter = Callable[[Any], Any]

# A glob's pieces between two stars that hold `?` are searched for at each place of the text,
# each place compared over the piece: ≈ 1.2 ms for a 32-character piece in a 32 KB string (the
# other pieces cost microseconds). A pattern taken from the event rather than written in the
# filter may hold at most this many such characters, else it matches nothing; written ones
# count against their instance's budget (`wildcard_cost`, `limits.py`).
MAX_EVENT_WILDCARD = 16
_NUMBERS = frozenset({int, float})


def compile_path(path: Path) -> Getter:
    """Return a function reading the path from an event, or MISSING when absent."""
    steps = tuple((key, int(key) if key.isascii() and key.isdigit() else None) for key in path.keys)
    if len(steps) == 1:
        only = steps[0][0]
        return lambda event: event.get(only, MISSING) if type(event) is dict else MISSING

    def get(event: Any) -> Any:
        value = event
        for key, index in steps:
            kind = type(value)
            if kind is dict:
                value = value.get(key, MISSING)
                if value is MISSING:
                    return MISSING
            elif kind is list and index is not None and index < len(value):
                value = value[index]
            else:
                return MISSING
        return value

    return get


def _equal(a: Any, b: Any) -> bool:
    """Compare two JSON values for `=`: same type, numbers by value, no containers."""
    if a is MISSING:
        a = None
    if b is MISSING:
        b = None
    kind_a, kind_b = type(a), type(b)
    if kind_a is dict or kind_a is list or kind_b is dict or kind_b is list:
        return False
    if kind_a is kind_b:
        return a == b
    return kind_a in _NUMBERS and kind_b in _NUMBERS and a == b


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _comparable(a: Any, b: Any) -> bool:
    """Tell whether two values can be ordered: two numbers or two strings."""
    kind_a, kind_b = type(a), type(b)
    return (kind_a in _NUMBERS and kind_b in _NUMBERS) or (kind_a is str and kind_b is str)


def _compile_compare(node: Compare) -> Test:
    """Compile a comparison, specializing the common `path op literal` shape."""
    left, right, op = node.left, node.right, node.op
    if isinstance(left, Literal) and isinstance(right, Path):
        mirrored = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        return _compile_compare(Compare(mirrored, right, left))
    if isinstance(left, Path) and isinstance(right, Literal):
        return _compile_path_literal(compile_path(left), op, right.value)
    get_left, get_right = _compile_operand(left), _compile_operand(right)
    if op == "=":
        return lambda e: _equal(get_left(e), get_right(e))
    if op == "!=":
        return lambda e: not _equal(get_left(e), get_right(e))
    order = _ORDERINGS[op]

    def ordered(e: Mapping[str, Any]) -> bool:
        a, b = get_left(e), get_right(e)
        return _comparable(a, b) and order(a, b)

    return ordered


def _compile_path_literal(get: Getter, op: str, constant: Any) -> Test:
    """Compile `path op literal` into one closure without generic dispatch."""
    kind = type(constant)
    if op in ("=", "!="):
        equal = _equal_to(get, constant)
        return equal if op == "=" else lambda e: not equal(e)
    order = _ORDERINGS[op]
    if kind is str:
        return lambda e: type(value := get(e)) is str and order(value, constant)
    if kind in _NUMBERS:
        return lambda e: type(value := get(e)) in _NUMBERS and order(value, constant)
    return lambda e: False


def _equal_to(get: Getter, constant: Any) -> Test:
    """Compile `path = literal` for the literal's type."""
    if constant is None:
        return lambda e: (value := get(e)) is None or value is MISSING
    kind = type(constant)
    if kind is bool:
        return lambda e: get(e) is constant
    if kind is str:
        return lambda e: get(e) == constant
    return lambda e: type(value := get(e)) in _NUMBERS and value == constant


def _compile_operand(operand: Operand) -> Getter:
    """Compile an operand into a getter (constant for literals)."""
    if isinstance(operand, Path):
        return compile_path(operand)
    value = operand.value
    return lambda e: value


def _contains(value: Any, part: Any) -> bool:
    """Tell whether `part` is a substring of a string or an element of an array."""
    kind = type(value)
    if kind is str:
        return type(part) is str and part in value
    if kind is list:
        return any(_equal(item, part) for item in value)
    return False


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> Callable[[str], bool]:
    """Compile a glob (`*` any run, `?` one character) into a whole-string matcher.

    Pieces between stars have a fixed length, so matching each at its leftmost place
    is exact and linear: no backtracking, whatever the pattern.
    """
    pieces = [_compile_piece(piece) for piece in pattern.split("*")]
    if len(pieces) == 1:
        size, at, _ = pieces[0]
        return lambda text: len(text) == size and at(text, 0)
    (head_size, head_at, _), (tail_size, tail_at, _) = pieces[0], pieces[-1]
    middle = [piece for piece in pieces[1:-1] if piece[0]]
    least = head_size + tail_size + sum(size for size, _, _ in middle)

    def matches(text: str) -> bool:
        end = len(text) - tail_size
        if len(text) < least or not head_at(text, 0) or not tail_at(text, end):
            return False
        position = head_size
        for size, _, find in middle:
            found = find(text, position, end)
            if found < 0:
                return False
            position = found + size
        return True

    return matches


def wildcard_chars(pattern: str) -> int:
    """Count the characters of a glob's searched pieces that hold `?` (between two stars):
    matching costs about the text's length times this."""
    return sum(len(piece) for piece in pattern.split("*")[1:-1] if "?" in piece)


@lru_cache(maxsize=256)
def _event_glob(pattern: str) -> Callable[[str], bool]:
    """Compile a pattern an event supplied, or match nothing when it would search too long."""
    if wildcard_chars(pattern) > MAX_EVENT_WILDCARD:
        return lambda text: False
    return compile_glob(pattern)


def wildcard_cost(condition: Condition) -> int:
    """Return a condition's worst matching work per character of text: its `match` calls'
    searched `?` characters (MAX_EVENT_WILDCARD for a pattern taken from the event)."""
    if isinstance(condition, Match):
        pattern = condition.pattern
        if isinstance(pattern, Literal):
            return wildcard_chars(pattern.value) if type(pattern.value) is str else 0
        return MAX_EVENT_WILDCARD
    if isinstance(condition, Not):
        return wildcard_cost(condition.operand)
    if isinstance(condition, And | Or):
        return sum(wildcard_cost(term) for term in condition.terms)
    return 0


def _compile_piece(
    piece: str,
) -> tuple[int, Callable[[str, int], bool], Callable[[str, int, int], int]]:
    """Return (length, match-at, find-leftmost) for a star-free glob piece."""
    if "?" not in piece:
        return (
            len(piece),
            lambda text, at: text.startswith(piece, at),
            lambda text, start, end: text.find(piece, start, end),
        )
    regex = re.compile("".join("." if c == "?" else re.escape(c) for c in piece), re.DOTALL)

    def find(text: str, start: int, end: int) -> int:
        found = regex.search(text, start, end)
        return -1 if found is None else found.start()

    return len(piece), lambda text, at: regex.match(text, at) is not None, find


def _compile_match(node: Match) -> Test:
    """Compile `match(value, pattern)`, compiling a literal pattern once."""
    get = _compile_operand(node.value)
    if isinstance(node.pattern, Literal):
        if type(node.pattern.value) is not str:
            return lambda e: False
        glob = compile_glob(node.pattern.value)
        return lambda e: type(value := get(e)) is str and glob(value)
    get_pattern = _compile_operand(node.pattern)

    def matches(e: Mapping[str, Any]) -> bool:
        value, pattern = get(e), get_pattern(e)
        return type(value) is str and type(pattern) is str and _event_glob(pattern)(value)

    return matches


def compile_condition(condition: Condition) -> Test:
    """Compile a condition AST into a closure over the event."""
    if isinstance(condition, Compare):
        return _compile_compare(condition)
    if isinstance(condition, Exists):
        get = compile_path(condition.path)
        return lambda e: get(e) is not MISSING
    if isinstance(condition, Contains):
        get_value, get_part = _compile_operand(condition.value), _compile_operand(condition.part)
        return lambda e: _contains(get_value(e), get_part(e))
    if isinstance(condition, Match):
        return _compile_match(condition)
    if isinstance(condition, Const):
        constant = condition.value
        return lambda e: constant
    if isinstance(condition, Not):
        inner = compile_condition(condition.operand)
        return lambda e: not inner(e)
    terms = tuple(compile_condition(term) for term in condition.terms)
    if isinstance(condition, And):
        return lambda e: all(term(e) for term in terms)
    return lambda e: any(term(e) for term in terms)
