"""Characters past U+FFFF (emoji, many CJK ideographs, mathematical letters) are two UTF-16
units in JavaScript. STPyV8 hands a Python string to V8 one unit per character, cut to 16
bits: an event's '😀' (U+1F600) reached the function as U+F600, in its properties, its
settings, a fetch response, and in the function's own source."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime import RuntimePool
from services.runtime.engine import v8_source
from services.runtime.syntax import check_syntax
from tests.runtime.conftest import Sink, invoke, value_of

GRINNING = "\U0001f600"
CODE = """
async function onTrack(event, settings) {
  const 𝑥 = '😀'
  const r = await fetch('%s/echo', {method: 'POST', body: event.properties.name})
  return {
    literal: 𝑥, literalUnits: 𝑥.length, tagged: String.raw`😀`, matches: /^😀$/u.test(𝑥),
    event: event.properties.name, eventPoint: event.properties.name.codePointAt(0),
    setting: settings.greeting, echoed: (await r.json()).body,
  }
}
"""


async def test_astral_characters_reach_the_function_whole(pool: RuntimePool, sink: Sink) -> None:
    result = await invoke(
        pool,
        CODE % sink.url,
        events=[{"type": "track", "properties": {"name": GRINNING + " party"}}],
        settings={"greeting": "hi " + GRINNING},
    )
    assert value_of(result) == {
        "literal": GRINNING,
        "literalUnits": 2,
        "tagged": GRINNING,
        "matches": True,
        "event": GRINNING + " party",
        "eventPoint": 0x1F600,
        "setting": "hi " + GRINNING,
        "echoed": GRINNING + " party",
    }


@pytest.mark.parametrize("before", ["", "x", "é", "中"])
def test_a_long_text_with_one_astral_character_is_spelled_for_v8(before: str) -> None:
    # Texts of each width CPython stores (v8_source skips the search by it).
    text = before * 10_000 + GRINNING
    assert v8_source(text) == before * 10_000 + "\ud83d\ude00"


def test_an_astral_identifier_is_valid_syntax() -> None:
    # U+20000, a CJK ideograph, cut to 16 bits is U+0000.
    code = "const \U00020000 = 1; async function onTrack() { return \U00020000 }"
    assert check_syntax(code) is None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=40))
async def test_any_text_in_an_event_comes_back_as_it_was(pool: RuntimePool, text: str) -> None:
    code = "async function onTrack(event) { return event.properties.text }"
    result = await invoke(pool, code, events=[{"type": "track", "properties": {"text": text}}])
    assert value_of(result) == text
