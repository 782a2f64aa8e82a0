"""Tests for the filter condition language and destination filter actions."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.filters.actions import apply_filters, build_filter, parse_filter
from services.filters.conditions import compile_condition, compile_glob
from services.filters.errors import FilterSyntaxError
from services.filters.fql import (
    MAX_NESTING,
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
    parse_condition,
    parse_path,
    print_condition,
)

ORDER = {
    "type": "track",
    "event": "Order Completed",
    "messageId": "m-1",
    "userId": "u-1",
    "properties": {
        "total": 150,
        "ratio": 0.5,
        "currency": "EUR",
        "email": "ada@example.com",
        "vip": True,
        "coupon": None,
        "tags": ["new", "promo", 3],
        "items": [{"sku": "A-1", "price": 100}, {"sku": "B-2", "price": 50}],
        "order id": "o-9",
        "address": {"city": "Paris", "zip": "75001"},
    },
    "context": {"ip": "10.0.0.1", "library": {"name": "analytics.js"}},
}


def holds(text: str, event: dict[str, Any] = ORDER) -> bool:
    """Parse, compile and evaluate a condition."""
    return compile_condition(parse_condition(text))(event)


# --- the language, by example ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('type = "track"', True),
        ('type = "identify"', False),
        ('event = "Order Completed"', True),
        ('event != "Order Completed"', False),
        ("properties.total > 100", True),
        ("properties.total >= 150", True),
        ("properties.total < 150", False),
        ("properties.total <= 150.0", True),
        ("properties.total = 150.0", True),
        ("properties.ratio < 1", True),
        ('properties.total > "100"', False),
        ('properties.currency < "USD"', True),
        ("properties.vip = true", True),
        ("properties.vip = 1", False),
        ("properties.coupon = null", True),
        ("properties.missing = null", True),
        ("properties.missing != null", False),
        ("properties.currency != null", True),
        ("exists(properties.coupon)", True),
        ("exists(properties.missing)", False),
        ("exists(properties.address.city)", True),
        ("exists(properties.email.domain)", False),
        ('contains(properties.email, "@example")', True),
        ('contains(properties.tags, "promo")', True),
        ("contains(properties.tags, 3)", True),
        ('contains(properties.tags, "pro")', False),
        ('contains(properties.total, "1")', False),
        ('match(event, "Order*")', True),
        ('match(event, "order*")', False),
        ('match(event, "*Comp?eted")', True),
        ('match(event, "Order")', False),
        ('match(properties.email, "*@*.com")', True),
        ('match(properties.total, "1*")', False),
        ('properties.items.1.sku = "B-2"', True),
        ("properties.items.2.sku = null", True),
        ('properties.`order id` = "o-9"', True),
        ('context.library.name = "analytics.js"', True),
        ("properties.address = null", False),
        ("properties.tags = properties.tags", False),
        ("properties.total = properties.total", True),
        ('type = "track" and properties.total > 200', False),
        ('type = "track" and (properties.total > 200 or properties.vip = true)', True),
        ('not type = "track"', False),
        ('not (type = "identify" or event = "x")', True),
        ("true", True),
        ("false or true", True),
        ("not true", False),
        ("100 < properties.total", True),
        ('"Order Completed" = event', True),
    ],
)
def test_conditions_by_example(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_and_binds_tighter_than_or() -> None:
    assert parse_condition("a = 1 or b = 2 and c = 3") == Or(
        (
            Compare("=", Path(("a",)), Literal(1)),
            And((Compare("=", Path(("b",)), Literal(2)), Compare("=", Path(("c",)), Literal(3)))),
        )
    )


def test_keywords_are_fields_after_a_dot() -> None:
    assert holds("properties.and = null") is True
    assert parse_path("properties.not.0") == Path(("properties", "not", "0"))


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("", 1, 1, "end of text"),
        ('type = "track" and', 1, 19, "end of text"),
        ("properties.total > > 1", 1, 20, "unexpected '>'"),
        ('type = "track', 1, 8, "unterminated string"),
        ("type = 'track'", 1, 8, "unexpected character"),
        ('type = "track"\n  and event # "x"', 2, 13, "unexpected character '#'"),
        ("(type = 1", 1, 10, "expected ')'"),
        ("exists(1)", 1, 8, "unexpected '1'"),
        ("properties.x = 1e999", 1, 16, "out of range"),
        ('a = "\\q"', 1, 5, "invalid string literal"),
        ("type track", 1, 6, "a comparison (= != < <= > >=)"),
        ("a = 1 b = 2", 1, 7, "unexpected 'b'"),
    ],
)
def test_syntax_errors_carry_the_position(text: str, line: int, column: int, words: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_condition(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert words in caught.value.reason


def test_nesting_and_length_are_bounded() -> None:
    with pytest.raises(FilterSyntaxError, match="nests deeper"):
        parse_condition("not " * MAX_NESTING + "a = 1")
    with pytest.raises(FilterSyntaxError, match="longer than"):
        parse_condition("a = 1 or " * 2000 + "a = 1")
    assert holds("(" * 500 + "true" + ")" * 500) is True


def test_long_flat_chains_evaluate_without_recursion() -> None:
    text = " and ".join(["t=1"] * 1200)
    assert len(text) < 10_000
    assert holds(text, {"t": 1}) is True
    assert holds(text, {"t": 2}) is False


def test_glob_has_no_catastrophic_backtracking() -> None:
    matcher = compile_glob("*a*a*a*a*a*a*a*a*a*a*b")
    assert matcher("a" * 30_000) is False


# --- properties of the language -------------------------------------------------------

KEY_WORDS = ["a", "b", "0", "1", "and", "x y"]
common_keys = st.sampled_from(KEY_WORDS)
odd_keys = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="`"), min_size=1, max_size=5
)
paths = st.lists(common_keys | common_keys | odd_keys, min_size=1, max_size=3).map(
    lambda ks: Path(tuple(ks))
)
# Small pools make collisions (equal values, true vs 1, 1 vs 1.0) frequent.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-2, max_value=3)
    | st.sampled_from([0.0, -0.0, 1.0, 2.5])
    | st.sampled_from(["", "a", "ab", "new", "track", "Order*", "?", "*", "a?b*", "1"])
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
)
literals = scalars.map(Literal)
operands: st.SearchStrategy[Operand] = paths | literals
leaves: st.SearchStrategy[Condition] = (
    st.builds(Compare, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), operands, operands)
    | st.builds(Exists, paths)
    | st.builds(Contains, operands, operands)
    | st.builds(Match, operands, operands)
    | st.builds(Const, st.booleans())
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    leaves,
    lambda inner: (
        st.builds(Not, inner)
        | st.lists(inner, min_size=2, max_size=3).map(lambda ts: And(tuple(ts)))
        | st.lists(inner, min_size=2, max_size=3).map(lambda ts: Or(tuple(ts)))
    ),
    max_leaves=12,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(common_keys, inner, max_size=4),
    max_leaves=15,
)
events = st.dictionaries(common_keys, json_values, max_size=6)

MISSING = object()


def reference_get(event: Any, path: Path) -> Any:
    """Read a path the obvious way."""
    value = event
    for key in path.keys:
        if isinstance(value, dict):
            if key not in value:
                return MISSING
            value = value[key]
        elif isinstance(value, list) and key.isascii() and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return MISSING
    return value


def json_type(value: Any) -> str:
    """Name a value's JSON type."""
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def reference_equal(a: Any, b: Any) -> bool:
    """Equality as documented: same scalar type and value."""
    kind = json_type(a)
    if kind != json_type(b) or kind in ("list", "dict"):
        return False
    return kind == "null" or a == b


def reference_holds(condition: Condition, event: dict[str, Any]) -> bool:
    """Evaluate a condition by straightforward recursion over the AST."""

    def value(operand: Operand) -> Any:
        return reference_get(event, operand) if isinstance(operand, Path) else operand.value

    match condition:
        case Compare(op="=", left=left, right=right):
            return reference_equal(value(left), value(right))
        case Compare(op="!=", left=left, right=right):
            return not reference_equal(value(left), value(right))
        case Compare(op=op, left=left, right=right):
            a, b = value(left), value(right)
            if json_type(a) != json_type(b) or json_type(a) not in ("number", "str"):
                return False
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        case Exists(path=path):
            return reference_get(event, path) is not MISSING
        case Contains(value=whole, part=part):
            a, b = value(whole), value(part)
            if isinstance(a, str):
                return isinstance(b, str) and b in a
            return isinstance(a, list) and any(reference_equal(x, b) for x in a)
        case Match(value=subject, pattern=pattern):
            a, b = value(subject), value(pattern)
            if not (isinstance(a, str) and isinstance(b, str)):
                return False
            regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in b)
            return re.fullmatch(regex, a, re.DOTALL) is not None
        case Const(value=constant):
            return constant
        case Not(operand=inner):
            return not reference_holds(inner, event)
        case And(terms=terms):
            return all(reference_holds(t, event) for t in terms)
        case Or(terms=terms):
            return any(reference_holds(t, event) for t in terms)
    raise AssertionError(condition)


@settings(max_examples=500)
@given(conditions)
def test_print_then_parse_gives_the_same_condition(condition: Condition) -> None:
    text = print_condition(condition)
    again = parse_condition(text)
    assert again == condition
    assert print_condition(again) == text


@settings(max_examples=500)
@given(conditions, events)
def test_compiled_evaluation_agrees_with_reference(
    condition: Condition, event: dict[str, Any]
) -> None:
    assert compile_condition(condition)(event) is reference_holds(condition, event)


@given(conditions, events)
def test_double_negation_is_identity(condition: Condition, event: dict[str, Any]) -> None:
    assert compile_condition(Not(Not(condition)))(event) is compile_condition(condition)(event)


@given(conditions, conditions, events)
def test_de_morgan(left: Condition, right: Condition, event: dict[str, Any]) -> None:
    negated_and = compile_condition(Not(And((left, right))))(event)
    assert negated_and is compile_condition(Or((Not(left), Not(right))))(event)


@settings(max_examples=300)
@given(conditions, st.lists(json_values, max_size=3) | json_values)
def test_evaluation_never_raises_on_any_json(condition: Condition, junk: Any) -> None:
    test = compile_condition(condition)
    test({"properties": junk, "a": junk, "0": junk})
    if isinstance(junk, dict):
        test(junk)


@settings(max_examples=1000)
@given(st.text(max_size=60))
def test_parser_raises_only_syntax_errors_on_random_text(text: str) -> None:
    try:
        parse_condition(text)
    except FilterSyntaxError as exc:
        assert exc.line >= 1 and exc.column >= 1


FQL_ALPHABET = ' ()"`.,=!<>-0123456789eEaandornotexistscontainsmatchtruefalsenull\\\n'


@settings(max_examples=1000)
@given(st.text(st.sampled_from(FQL_ALPHABET), max_size=40))
def test_parser_raises_only_syntax_errors_on_fql_like_text(text: str) -> None:
    try:
        parse_condition(text)
    except FilterSyntaxError as exc:
        assert exc.line >= 1 and exc.column >= 1


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=12), st.text(max_size=6))
def test_glob_agrees_with_regex(text: str, pattern: str) -> None:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    assert compile_glob(pattern)(text) is (re.fullmatch(regex, text, re.DOTALL) is not None)


# --- filters and actions --------------------------------------------------------------


def test_drop_action_drops_matching_events_only() -> None:
    drop = parse_filter('{"if": "properties.total > 100", "action": "drop"}')
    assert drop.apply(ORDER) is None
    small = {**ORDER, "properties": {"total": 5}}
    assert drop.apply(small) is small


def test_drop_fields_copies_and_never_mutates() -> None:
    before = copy.deepcopy(ORDER)
    drop = parse_filter(
        '{"if": "type = \\"track\\"", "action": "drop_fields",'
        ' "fields": ["properties.email", "properties.address.city", "context.ip", "traits.x"]}'
    )
    result = drop.apply(ORDER)
    assert ORDER == before
    assert result is not None
    assert "email" not in result["properties"]
    assert result["properties"]["address"] == {"zip": "75001"}
    assert result["context"] == {"library": {"name": "analytics.js"}}
    assert result["properties"]["items"] is ORDER["properties"]["items"]


def test_drop_fields_returns_the_same_event_when_nothing_listed_is_present() -> None:
    drop = build_filter("true", "drop_fields", fields=["properties.nothing"])
    assert drop.apply(ORDER) is ORDER


def test_allow_fields_keeps_only_listed_keys_of_named_containers() -> None:
    before = copy.deepcopy(ORDER)
    event = {**ORDER, "traits": {"plan": "pro", "ssn": "x"}}
    allow = build_filter(
        "true", "allow_fields", fields=["properties.total", "properties.address.zip"]
    )
    result = allow.apply(event)
    assert ORDER == before
    assert result is not None
    assert result["properties"] == {"total": 150, "address": {"zip": "75001"}}
    assert result["traits"] == {"plan": "pro", "ssn": "x"}
    assert result["context"] is ORDER["context"]


def test_sampling_is_deterministic_and_close_to_the_percentage() -> None:
    sample = build_filter('type = "track"', "sample", percent=10)
    kept = [i for i in range(10_000) if sample.apply({"type": "track", "messageId": f"m-{i}"})]
    assert 850 < len(kept) < 1150
    again = [i for i in range(10_000) if sample.apply({"type": "track", "messageId": f"m-{i}"})]
    assert kept == again
    other = {"type": "identify", "messageId": "m-1"}
    assert sample.apply(other) is other


def test_sampling_zero_and_hundred_percent() -> None:
    event = {"type": "track", "messageId": "m"}
    assert build_filter("true", "sample", percent=0).apply(event) is None
    assert build_filter("true", "sample", percent=100).apply(event) is event


def test_apply_filters_runs_in_order_and_stops_at_a_drop() -> None:
    strip = build_filter("true", "drop_fields", fields=["properties.total"])
    drop_big = build_filter("properties.total > 100", "drop")
    assert apply_filters([drop_big, strip], ORDER) is None
    result = apply_filters([strip, drop_big], ORDER)
    assert result is not None and "total" not in result["properties"]
    assert apply_filters([], ORDER) is ORDER


@pytest.mark.parametrize(
    ("text", "words", "position"),
    [
        ("{", "not valid JSON", (1, 2)),
        ("[]", "a filter is a JSON object", (1, 1)),
        ('{"action": "drop", "iff": "true"}', "unknown key 'iff'", (1, 20)),
        ('{"if": 3, "action": "drop"}', "`if` must be a string", (1, 2)),
        ('{"if": "type = ", "action": "drop"}', "in `if`: unexpected end of text", (1, 8)),
        ('{"action": "delete"}', "`action` must be one of", (1, 2)),
        ('{"action": "sample"}', "needs `percent`", (1, 1)),
        ('{"action": "sample", "percent": 150}', "needs `percent`", (1, 22)),
        ('{"action": "sample", "percent": "10"}', "`percent` must be a number", (1, 22)),
        ('{"action": "drop", "percent": 10}', "only for sample", (1, 20)),
        ('{"action": "drop_fields"}', "non-empty `fields`", (1, 1)),
        ('{"action": "drop_fields", "fields": "properties.a"}', "list of strings", (1, 27)),
        ('{"action": "drop_fields", "fields": ["userId"]}', "paths under", (1, 27)),
        ('{"action": "allow_fields", "fields": ["context.ip"]}', "paths under", (1, 28)),
        ('{"action": "drop_fields", "fields": ["properties..a"]}', "in fields[0]", (1, 12)),
        ('{"action": "drop", "fields": ["properties.a"]}', "only for drop_fields", (1, 20)),
    ],
)
def test_bad_filter_definitions_are_rejected_with_position(
    text: str, words: str, position: tuple[int, int]
) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(text)
    assert words in caught.value.reason
    assert (caught.value.line, caught.value.column) == position


actions = st.sampled_from(["drop", "drop_fields", "allow_fields", "sample"])


@given(conditions, actions, st.floats(min_value=0, max_value=100))
def test_stored_text_round_trips(condition: Condition, action: Any, percent: float) -> None:
    fields = {"drop_fields": ["context.ip", "properties.`a b`"], "allow_fields": ["traits.x"]}
    compiled = build_filter(
        condition,
        action,
        fields=fields.get(action, []),
        percent=percent if action == "sample" else None,
    )
    text = compiled.to_text()
    again = parse_filter(text)
    assert again.to_text() == text
    assert again.condition == condition


@settings(max_examples=500)
@given(st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_parse_filter_raises_only_syntax_errors(text: str) -> None:
    try:
        parse_filter(text)
    except FilterSyntaxError:
        pass


@given(
    st.fixed_dictionaries(
        {"action": actions},
        optional={
            "if": st.text(st.sampled_from(FQL_ALPHABET), max_size=20) | scalars,
            "fields": st.lists(st.text(max_size=12)) | scalars,
            "percent": scalars,
        },
    )
)
def test_parse_filter_raises_only_syntax_errors_on_near_miss_objects(spec: Any) -> None:
    try:
        parse_filter(json.dumps(spec))
    except FilterSyntaxError:
        pass


@settings(max_examples=300)
@given(conditions, events, st.lists(paths, min_size=1, max_size=3))
def test_actions_never_raise_or_mutate(
    condition: Condition, event: dict[str, Any], field_paths: list[Path]
) -> None:
    before = copy.deepcopy(event)
    fields = [Path(("properties", *p.keys)) for p in field_paths]
    for compiled in (
        build_filter(condition, "drop"),
        build_filter(condition, "sample", percent=50),
        build_filter(condition, "drop_fields", fields=fields),
        build_filter(condition, "allow_fields", fields=fields),
    ):
        compiled.apply(event)
        assert event == before


def test_a_bare_condition_is_a_drop_filter() -> None:
    f = parse_filter('event = "Skip Me"')
    assert apply_filters([f], {"type": "track", "event": "Skip Me"}) is None
    kept = {"type": "track", "event": "Keep"}
    assert apply_filters([f], kept) is kept
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter("event = ")
    assert "in the condition" in str(info.value) and info.value.column >= 1
