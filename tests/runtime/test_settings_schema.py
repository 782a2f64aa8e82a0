"""The settings module: type names, schema checks, value checks and `--set` parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventfn_api.type.v1 import types_pb2
from services.runtime.settings_schema import (
    BOOLEAN,
    KINDS,
    STRING,
    STRING_ARRAY,
    TEXT_MAP,
    Problem,
    check_definitions,
    check_values,
    format_value,
    normal_definitions,
    parse_assignments,
    parse_type,
    parse_value,
    value_problem,
)

# Each kind with the names a user may write for it: ours, Segment's editor's, its API's.
SPELLINGS = {
    STRING: ["string", "String", "STRING"],
    BOOLEAN: ["boolean", "Boolean", "BOOLEAN", "bool"],
    TEXT_MAP: ["text-map", "text map", "Text Map", "TEXT_MAP", "textMap", "map", "Map"],
    STRING_ARRAY: [
        "string-array",
        "array",
        "Array",
        "ARRAY",
        "string array",
        "STRING_ARRAY",
        "stringArray",
    ],
}
ALIASES = {name.lower() for names in SPELLINGS.values() for name in names}
non_string = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.none())
)
kind_values = {
    STRING: st.text(),
    BOOLEAN: st.booleans(),
    TEXT_MAP: st.dictionaries(st.text(), st.text(), max_size=5),
    STRING_ARRAY: st.lists(st.text(), max_size=5),
}


# -- type names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name"), [(k, n) for k, names in SPELLINGS.items() for n in names]
)
def test_segment_and_our_type_names_are_accepted(kind: str, name: str) -> None:
    assert parse_type(name) == kind


@given(
    st.sampled_from([(k, n) for k, names in SPELLINGS.items() for n in names]),
    st.sampled_from(["", " ", "  ", "\t"]),
)
def test_type_names_ignore_case_and_surrounding_space(pair: tuple[str, str], pad: str) -> None:
    kind, name = pair
    assert parse_type(pad + name.swapcase() + pad) == kind


@given(st.text())
def test_any_other_type_name_is_unknown(text: str) -> None:
    normal = " ".join(text.replace("_", " ").replace("-", " ").lower().split())
    if normal.removeprefix("setting type ") not in ALIASES:
        assert parse_type(text) is None


@pytest.mark.parametrize(
    ("number", "name", "kind"),
    [  # the wire contract (eventfn/type/v1/types.proto), not the code's own table
        (1, "SETTING_TYPE_STRING", STRING),
        (2, "SETTING_TYPE_BOOLEAN", BOOLEAN),
        (3, "SETTING_TYPE_TEXT_MAP", TEXT_MAP),
        (4, "SETTING_TYPE_STRING_ARRAY", STRING_ARRAY),
    ],
)
def test_api_numbers_and_enum_names_map_to_kinds(number: int, name: str, kind: str) -> None:
    assert types_pb2.SettingType.Value(name) == number
    assert parse_type(number) == kind
    assert parse_type(name) == kind


def test_unspecified_numbers_and_booleans_are_not_types() -> None:
    assert parse_type(0) is None
    assert parse_type(99) is None
    assert parse_type(True) is None


# -- schemas ---------------------------------------------------------------------------------


def test_every_bad_definition_is_reported() -> None:
    rows = [
        {"name": "ok", "type": "array"},
        {"name": "bad1", "type": "number"},
        {"name": "2bad", "type": "string"},
        {"name": "flags", "type": "text map", "required": "yes"},
        {"name": "ok", "type": "string"},
        "not an object",
        {"name": "typo", "requried": True},
    ]
    assert [p.field for p in check_definitions(rows)] == [
        "settings[1].type",
        "settings[2].name",
        "settings[3].required",
        "settings[4].name",
        "settings[5]",
        "settings[6].requried",
    ]


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(sorted(ALIASES))), max_size=8))
def test_one_problem_per_bad_type(rows: list[tuple[bool, str]]) -> None:
    schema = [
        {"name": f"s{i}", "type": name if good else name + "x"}
        for i, (good, name) in enumerate(rows)
    ]
    bad = [f"settings[{i}].type" for i, (good, _) in enumerate(rows) if not good]
    assert [p.field for p in check_definitions(schema)] == bad


def test_normal_definitions_fill_defaults_and_name_kinds() -> None:
    rows = [{"name": "headers", "type": "Text Map"}, {"name": "key", "label": "Key"}]
    assert normal_definitions(rows) == [
        {
            "label": "headers",
            "name": "headers",
            "type": TEXT_MAP,
            "description": "",
            "required": False,
            "encrypted": False,
        },
        {
            "label": "Key",
            "name": "key",
            "type": STRING,
            "description": "",
            "required": False,
            "encrypted": False,
        },
    ]


# -- values ----------------------------------------------------------------------------------


@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), kind_values[k])))
def test_values_of_the_kind_fit(pair: tuple[str, object]) -> None:
    kind, value = pair
    assert value_problem(kind, value) is None


@given(
    st.dictionaries(st.text(), st.text(), max_size=4),
    st.text(min_size=1),
    non_string,
)
def test_a_bad_map_names_its_key(good: dict[str, str], key: str, bad: object) -> None:
    value = {**good, key: bad}
    problem = value_problem(TEXT_MAP, value)
    assert problem is not None and repr(key) in problem


@given(st.lists(st.text(), max_size=4), st.integers(0, 4), non_string)
def test_a_bad_array_names_its_index(items: list[str], at: int, bad: object) -> None:
    at = min(at, len(items))
    value = [*items[:at], bad, *items[at:]]
    problem = value_problem(STRING_ARRAY, value)
    assert problem is not None and f"[{at}]" in problem


def test_check_values_names_each_setting() -> None:
    schema = [
        {"name": "endpoint", "type": STRING, "required": True},
        {"name": "headers", "type": TEXT_MAP},
        {"name": "tags", "type": "array"},
    ]
    problems = check_values(
        schema, {"headers": {"X-A": "1", "X-B": 2}, "tags": ["a", 3], "extra": 1}
    )
    assert problems == [
        Problem(
            "settings.extra",
            "is not declared by the function version; declared: endpoint, headers, tags",
        ),
        Problem("settings.endpoint", "the required setting 'endpoint' is missing"),
        Problem("settings.headers", "must be a text map of strings: key 'X-B' holds a number"),
        Problem("settings.tags", "must be an array of strings: item [1] is a number"),
    ]


# -- `--set name=value` ------------------------------------------------------------------------


@given(st.text())
def test_a_string_setting_takes_the_text_as_is(text: str) -> None:
    assert parse_value(STRING, text) == text


def test_a_number_for_a_string_setting_stays_a_string() -> None:
    schema = [{"name": "endpoint", "type": "string"}]
    assert parse_assignments(schema, ["endpoint=123"]) == ({"endpoint": "123"}, [])


@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), kind_values[k])))
def test_formatted_values_parse_back(pair: tuple[str, object]) -> None:
    kind, value = pair
    assert parse_value(kind, format_value(kind, value)) == value


@given(st.sampled_from(KINDS), st.text())
def test_whatever_parses_fits_its_kind(kind: str, text: str) -> None:
    try:
        value = parse_value(kind, text)
    except ValueError:
        return
    assert value is None or value_problem(kind, value) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("YES", True), ("on", True), ("1", True), ("false", False), ("off", False)],
)
def test_boolean_words(text: str, value: bool) -> None:
    assert parse_value(BOOLEAN, text) is value


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters=",["), min_size=1).filter(
            lambda s: s == s.strip()
        ),
        min_size=1,
    )
)
def test_arrays_may_be_comma_separated(items: list[str]) -> None:
    assert parse_value(STRING_ARRAY, ",".join(items)) == items


def test_every_bad_assignment_is_reported() -> None:
    schema = [
        {"name": "on", "type": BOOLEAN},
        {"name": "headers", "type": TEXT_MAP},
        {"name": "tags", "type": STRING_ARRAY},
        {"name": "endpoint", "type": STRING},
    ]
    values, problems = parse_assignments(
        schema,
        [
            "on=maybe",
            'headers={"a": 1}',
            "tags=[1]",
            "nope=1",
            "noequals",
            "endpoint=https://x/?a=b",
        ],
    )
    assert values == {"endpoint": "https://x/?a=b"}
    assert [str(p) for p in problems] == [
        "--set on: must be true or false, got 'maybe'",
        "--set headers: must be a text map of strings: key 'a' holds a number",
        "--set tags: must be an array of strings: item [0] is a number",
        "--set nope: is not declared by the version; declared: endpoint, headers, on, tags",
        "--set: takes name=value, got 'noequals'",
    ]


def test_a_map_that_is_not_json_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="JSON object of strings"):
        parse_value(TEXT_MAP, "a=b")
    assert json.loads(format_value(TEXT_MAP, {"a": "b"})) == {"a": "b"}
