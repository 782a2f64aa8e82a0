"""Tests for splitting routed events into packs with dedupe ids."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.packs import DEFAULT_PACK_BYTES, dedupe_id, pack_encoded, pack_events

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
events = st.lists(
    st.fixed_dictionaries(
        {"messageId": texts, "type": st.just("track")},
        optional={"properties": st.dictionaries(texts, texts | st.integers(-5, 5), max_size=4)},
    ),
    max_size=30,
)
caps = st.integers(min_value=2, max_value=400)


@given(events, caps)
def test_packs_concatenate_to_the_input_in_order(items: list[dict[str, Any]], cap: int) -> None:
    packs = pack_events("i-1", items, max_bytes=cap)
    decoded = [event for pack in packs for event in orjson.loads(pack.body)]
    assert decoded == items
    assert [m for pack in packs for m in pack.message_ids] == [e["messageId"] for e in items]


@given(events, caps)
def test_packs_respect_the_cap_unless_single_and_are_never_empty(
    items: list[dict[str, Any]], cap: int
) -> None:
    packs = pack_events("i-1", items, max_bytes=cap)
    assert (len(packs) == 0) == (len(items) == 0)
    for pack in packs:
        assert pack.count >= 1
        assert len(pack.body) <= cap or pack.count == 1


@given(events, caps)
def test_packs_are_greedy(items: list[dict[str, Any]], cap: int) -> None:
    packs = pack_events("i-1", items, max_bytes=cap)
    for pack, following in itertools.pairwise(packs):
        first_next = orjson.dumps(orjson.loads(following.body)[0])
        assert len(pack.body) + 1 + len(first_next) > cap


@given(events, caps)
def test_dedupe_ids_are_stable_for_the_same_message_ids(
    items: list[dict[str, Any]], cap: int
) -> None:
    first = pack_events("i-1", items, max_bytes=cap)
    # A resend carries other server-filled values but the same messageIds.
    resent = [{**e, "receivedAt": "later"} for e in items]
    again = pack_events("i-1", resent, max_bytes=cap + 1000)
    if len(first) == len(again) == 1:
        assert first[0].dedupe_id == again[0].dedupe_id
    assert [p.dedupe_id for p in first] == [
        p.dedupe_id for p in pack_events("i-1", items, max_bytes=cap)
    ]


@given(st.lists(texts, min_size=1), st.lists(texts, min_size=1))
def test_dedupe_ids_differ_for_different_message_ids(a: list[str], b: list[str]) -> None:
    assert (dedupe_id("i", a) == dedupe_id("i", b)) == (a == b)


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@given(
    st.lists(st.text(st.one_of(st.characters(), surrogates), max_size=8), min_size=1),
    st.lists(st.text(st.one_of(st.characters(), surrogates), max_size=8), min_size=1),
)
def test_dedupe_ids_of_ids_with_lone_surrogates_differ_too(a: list[str], b: list[str]) -> None:
    assert (dedupe_id("i", a) == dedupe_id("i", b)) == (a == b)


def test_dedupe_id_names_the_instance_and_separates_ids() -> None:
    assert dedupe_id("inst-7", ["m"]).startswith("inst-7:")
    assert dedupe_id("a", ["m"]) != dedupe_id("b", ["m"])
    assert dedupe_id("i", ["ab", "c"]) != dedupe_id("i", ["a", "bc"])
    assert len(dedupe_id("i", ["m"]).split(":")[1]) == 32


def test_default_cap_is_one_megabyte_and_an_oversize_event_goes_alone() -> None:
    small = {"messageId": "s", "type": "track"}
    big = {"messageId": "b", "type": "track", "properties": {"x": "y" * DEFAULT_PACK_BYTES}}
    packs = pack_events("i", [small, big, small])
    assert [p.message_ids for p in packs] == [("s",), ("b",), ("s",)]
    assert len(packs[1].body) > DEFAULT_PACK_BYTES


def test_exact_fit_stays_in_one_pack() -> None:
    items = [("a", b'"x"'), ("b", b'"y"')]
    assert len(pack_encoded("i", items, max_bytes=9)) == 1  # ["x","y"]
    assert len(pack_encoded("i", items, max_bytes=8)) == 2


def test_cap_must_fit_the_brackets() -> None:
    with pytest.raises(ValueError):
        pack_encoded("i", [], max_bytes=1)
