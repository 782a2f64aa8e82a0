"""Where in the function's code an error happened: from the runtime's V8 stack."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.common.error_location import (
    SCRIPT_NAME,
    describe_error,
    error_location,
    location_text,
)
from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, pool_config


async def test_a_stack_from_the_runtime_names_the_line_that_threw() -> None:
    code = "async function onTrack(event) {\n  const user = undefined\n  return user.name\n}\n"
    async with RuntimePool(pool_config(workers=1)) as pool:
        (outcome,) = (await invoke(pool, code)).outcomes
    assert outcome.error_type == "TypeError", outcome
    assert error_location(outcome.stack) == (3, 15), outcome.stack  # `name` of `user.name`
    assert (
        describe_error(outcome.error_type, "x", outcome.stack) == "TypeError: x (function.js:3:15)"
    )


def test_the_innermost_frame_in_the_function_wins() -> None:
    stack = (
        "TypeError: Cannot read properties of undefined (reading 'name')\n"
        "    at plan (function.js:3:38)\n"
        "    at onTrack (function.js:7:5)\n"
        "    at async Promise.all (index 0)"
    )
    assert error_location(stack) == (3, 38)
    assert location_text(stack) == "function.js:3:38"
    assert describe_error("TypeError", "boom", stack) == "TypeError: boom (function.js:3:38)"


def test_anonymous_frames_count_and_the_message_line_does_not() -> None:
    assert error_location("Error: x\n    at function.js:12:1") == (12, 1)
    assert error_location("Error: see function.js:9:9\n    at other.js:1:1") is None
    assert error_location("") is None
    assert describe_error("MemoryLimitExceeded", "too much") == "MemoryLimitExceeded: too much"
    assert describe_error("Error", "") == "Error"


@given(
    st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40),
    st.integers(1, 10**6),
    st.integers(1, 10**4),
    st.sampled_from(["at onTrack (", "at async onBatch (", "at new Thing (", "at "]),
)
def test_a_frame_gives_back_its_line_and_column(
    message: str, line: int, column: int, prefix: str
) -> None:
    close = ")" if prefix.endswith("(") else ""
    stack = f"Error: {message}\n    {prefix}{SCRIPT_NAME}:{line}:{column}{close}"
    assert error_location(stack) == (line, column)
