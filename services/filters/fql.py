"""Parse, print and compile the FQL-like condition language of destination filters.

Syntax (grammar in `fql.lark`):

- Fields are dot paths into the event: `type`, `event`, `properties.total`,
  `context.page.url`; a number after a dot indexes an array (`properties.items.0.sku`);
  a key with other characters goes in backticks (`` properties.`order id` ``).
- Literals: `"double-quoted strings"` (JSON escapes), numbers (`100`, `-2.5e3`),
  `true`, `false`, `null`.
- Comparisons: `=`, `!=`, `<`, `<=`, `>`, `>=` between fields and literals.
- Functions: `exists(path)` (the key is present, even with a null value),
  `contains(value, part)` (substring of a string, or element of an array),
  `match(value, "glob")` (whole-string glob, `*` any run of characters, `?` one
  character, case-sensitive).
- `not`, `and`, `or` (loosest), parentheses; `true` and `false` alone are conditions.

Semantics: a missing field compares like `null`; `=` holds between equal values of
the same JSON type (numbers compare by value, objects and arrays never equal
anything); ordering holds between two numbers or two strings and is false otherwise.
Evaluation never raises: any mismatch of types just makes the test false.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from services.filters.errors import FilterSyntaxError

MAX_CONDITION_CHARS = 10_000
MAX_NESTING = 64
KEYWORDS = frozenset({"and", "or", "not", "exists", "contains", "match", "true", "false", "null"})
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*")
_INDEX = re.compile(r"[0-9]+")

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Path:
    """Address a value in the event by its keys (and array indexes)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Literal:
    """Hold a constant: string, number, boolean or null."""

    value: Scalar


Operand = Path | Literal


@dataclass(frozen=True, slots=True)
class Compare:
    """Compare two operands with one of `= != < <= > >=`."""

    op: str
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class Exists:
    """Hold when the path is present in the event."""

    path: Path


@dataclass(frozen=True, slots=True)
class Contains:
    """Hold when `part` is a substring of `value`, or an element of it when an array."""

    value: Operand
    part: Operand


@dataclass(frozen=True, slots=True)
class Match:
    """Hold when `value` is a string matching the glob `pattern` as a whole."""

    value: Operand
    pattern: Operand


@dataclass(frozen=True, slots=True)
class Const:
    """Hold always (`true`) or never (`false`)."""

    value: bool


@dataclass(frozen=True, slots=True)
class Not:
    """Negate a condition."""

    operand: Condition


@dataclass(frozen=True, slots=True)
class And:
    """Hold when every term holds."""

    terms: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Hold when any term holds."""

    terms: tuple[Condition, ...]


Condition = Compare | Exists | Contains | Match | Const | Not | And | Or


class _Missing:
    """Mark a path absent from the event (distinct from a null value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# --- parsing --------------------------------------------------------------------------


def _fail_at(token: Token, message: str) -> FilterSyntaxError:
    """Build a syntax error located at a token."""
    return FilterSyntaxError(message, token.line or 1, token.column or 1)


class _ToAst(Transformer[Token, Any]):
    """Build AST nodes as the LALR parser reduces (no recursion over the tree)."""

    def or_expr(self, terms: list[Condition]) -> Or:
        return Or(tuple(terms))

    def and_expr(self, terms: list[Condition]) -> And:
        return And(tuple(terms))

    def not_(self, children: list[Condition]) -> Not:
        return Not(children[0])

    def compare(self, children: list[Any]) -> Compare:
        left, op, right = children
        return Compare(str(op), left, right)

    def exists(self, children: list[Path]) -> Exists:
        return Exists(children[0])

    def contains(self, children: list[Operand]) -> Contains:
        return Contains(children[0], children[1])

    def match(self, children: list[Operand]) -> Match:
        return Match(children[0], children[1])

    def always(self, _: list[Any]) -> Const:
        return Const(True)

    def never(self, _: list[Any]) -> Const:
        return Const(False)

    def true(self, _: list[Any]) -> Literal:
        return Literal(True)

    def false(self, _: list[Any]) -> Literal:
        return Literal(False)

    def null(self, _: list[Any]) -> Literal:
        return Literal(None)

    def string(self, children: list[Token]) -> Literal:
        token = children[0]
        try:
            value = orjson.loads(str(token))
        except orjson.JSONDecodeError as exc:
            raise _fail_at(token, f"invalid string literal: {exc.msg}") from exc
        return Literal(value)

    def number(self, children: list[Token]) -> Literal:
        token = children[0]
        text = str(token)
        try:
            if any(c in text for c in ".eE"):
                value: int | float = float(text)
                if value in (float("inf"), float("-inf")):
                    raise ValueError("out of range")
            else:
                value = int(text)
        except ValueError as exc:
            raise _fail_at(token, f"number {text[:20]} is out of range") from exc
        return Literal(value)

    def path(self, children: list[Token]) -> Path:
        return Path(tuple(t[1:-1] if t.type == "QUOTED" else str(t) for t in children))

    def field(self, children: list[Path]) -> Path:
        return children[0]


_TERMINAL_NAMES = {
    "NAME": "a field",
    "QUOTED": "a `quoted` field",
    "INDEX": "an array index",
    "STRING": "a string",
    "NUMBER": "a number",
    "COMPARATOR": "a comparison (= != < <= > >=)",
    "$END": "the end",
}


@functools.cache
def _parser() -> Lark:
    """Build the LALR parser once per process."""
    grammar = resources.files("services.filters").joinpath("fql.lark").read_text("utf-8")
    return Lark(
        grammar,
        parser="lalr",
        start=["condition", "field"],
        transformer=_ToAst(),
        maybe_placeholders=False,
    )


def _describe(terminal: str) -> str:
    """Name a grammar terminal the way a user would."""
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    for definition in _parser().terminals:
        if definition.name == terminal:
            return repr(definition.pattern.value.replace("\\", ""))
    return terminal


def _end_position(text: str) -> tuple[int, int]:
    """Return the (line, column) just past the end of the text."""
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


def _syntax_error(text: str, exc: UnexpectedInput) -> FilterSyntaxError:
    """Turn a lark error into a FilterSyntaxError with a readable message."""
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedCharacters):
        found = text[exc.pos_in_stream]
        message = "unterminated string" if found == '"' else f"unexpected character {found!r}"
    elif isinstance(exc, UnexpectedToken):
        expected = sorted({_describe(t) for t in exc.expected})
        found = "end of text" if exc.token.type == "$END" else repr(str(exc.token))
        message = f"unexpected {found}; expected {' or '.join(expected)}"
        if exc.token.type == "$END":
            line, column = _end_position(text)
    else:
        message = "unexpected end of text"
    if not isinstance(line, int) or line < 1 or not isinstance(column, int) or column < 1:
        line, column = _end_position(text)
    return FilterSyntaxError(message, line, column)


def _parse(text: str, start: str) -> Any:
    """Run the parser from one start symbol, raising only FilterSyntaxError."""
    if len(text) > MAX_CONDITION_CHARS:
        raise FilterSyntaxError(f"text is longer than {MAX_CONDITION_CHARS} characters", 1, 1)
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None


def parse_condition(text: str) -> Condition:
    """Parse condition text into its AST, raising FilterSyntaxError with the position."""
    condition: Condition = _parse(text, "condition")
    if nesting(condition) > MAX_NESTING:
        raise FilterSyntaxError(f"condition nests deeper than {MAX_NESTING} levels", 1, 1)
    return condition


def parse_path(text: str) -> Path:
    """Parse one field path (as listed in a filter's `fields`)."""
    return _parse(text, "field")


def nesting(condition: Condition) -> int:
    """Return how deep the condition nests, without recursion."""
    deepest = 0
    stack: list[tuple[Condition, int]] = [(condition, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, Not):
            stack.append((node.operand, depth + 1))
        elif isinstance(node, And | Or):
            stack.extend((term, depth + 1) for term in node.terms)
    return deepest


# --- printing -------------------------------------------------------------------------


def print_path(path: Path) -> str:
    """Print a path in the syntax that parses back to it."""
    parts = []
    for position, key in enumerate(path.keys):
        bare = _NAME.fullmatch(key) is not None and (position > 0 or key not in KEYWORDS)
        if position > 0 and _INDEX.fullmatch(key):
            bare = True
        parts.append(key if bare else f"`{key}`")
    return ".".join(parts)


def _print_operand(operand: Operand) -> str:
    """Print a path or a literal."""
    if isinstance(operand, Path):
        return print_path(operand)
    value = operand.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return repr(value)


def print_condition(condition: Condition) -> str:
    """Print a condition in canonical form; parsing it gives back an equal AST."""
    if isinstance(condition, Compare):
        left, right = _print_operand(condition.left), _print_operand(condition.right)
        return f"{left} {condition.op} {right}"
    if isinstance(condition, Exists):
        return f"exists({print_path(condition.path)})"
    if isinstance(condition, Contains):
        return f"contains({_print_operand(condition.value)}, {_print_operand(condition.part)})"
    if isinstance(condition, Match):
        return f"match({_print_operand(condition.value)}, {_print_operand(condition.pattern)})"
    if isinstance(condition, Const):
        return "true" if condition.value else "false"
    if isinstance(condition, Not):
        inner = print_condition(condition.operand)
        return f"not ({inner})" if isinstance(condition.operand, And | Or) else f"not {inner}"
    joiner = " and " if isinstance(condition, And) else " or "
    # Every nested and/or is parenthesized, so the n-ary grouping survives a re-parse.
    return joiner.join(
        f"({print_condition(t)})" if isinstance(t, And | Or) else print_condition(t)
        for t in condition.terms
    )
