"""Secrets in texts the runtime cuts or words itself. An error's message, name and stack and
the last log line that fits were cut to their caps before they were redacted: a secret
spelled across a cap left its first characters (24 of 34). And when a function broke the
runtime's host interface (a throwing `Object.prototype.toJSON`, a replaced
`Promise.prototype.then`), the refusal quoted its error, secret and all, unredacted into the
outcome, the span and the dead letter. Texts now come CUT_MARGIN longer than their caps and
are cut once redacted, never inside a secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime import RuntimePool
from services.runtime.http_fetch import TRACE_BODY_CAP
from services.runtime.redact import REDACTED, compile_secrets, redact_cut
from services.runtime.report import (
    MAX_ERROR_MESSAGE,
    MAX_ERROR_NAME,
    MAX_ERROR_STACK,
    MAX_URL_CHARS,
)
from tests.runtime.conftest import Sink, invoke, pool, sink

__all__ = ["pool", "sink"]

SECRET = "sk_live_0123456789abcdefghijKLMNOP"


@pytest.mark.parametrize(
    ("where", "cap"),
    [("message", MAX_ERROR_MESSAGE), ("name", MAX_ERROR_NAME), ("stack", MAX_ERROR_STACK)],
)
async def test_a_secret_across_an_error_cap_is_redacted_whole(
    pool: RuntimePool, where: str, cap: int
) -> None:
    # The secret starts 10 characters before the cap (the stack starts with the name).
    code = f"""async function onTrack(event, settings) {{
      const e = new Error('m');
      e.{where} = 'x'.repeat({cap - 10}) + settings.apiKey;
      throw e
    }}"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    (outcome,) = result.outcomes
    text = {"message": outcome.message, "name": outcome.error_type, "stack": outcome.stack}[where]
    assert text is not None and len(text) <= cap
    assert SECRET[:6] not in text


async def test_a_secret_across_the_log_cap_is_redacted_whole(pool: RuntimePool) -> None:
    cap = pool.config.log_cap_bytes
    code = f"""async function onTrack(event, settings) {{
      console.log('y'.repeat({cap - 10}) + settings.apiKey)
    }}"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    (line,) = result.logs
    assert result.logs_truncated and len(line.message) <= cap
    assert SECRET[:6] not in line.message


@pytest.mark.parametrize(
    "breaks",
    [
        "Object.prototype.toJSON = function () { throw new Error('leak ' + settings.apiKey) }",
        "Promise.prototype.then = function () { throw new Error('leak ' + settings.apiKey) }",
    ],
)
async def test_a_function_that_breaks_the_runtime_is_told_without_its_secrets(
    pool: RuntimePool, breaks: str
) -> None:
    code = f"async function onTrack(event, settings) {{ {breaks} }}"
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    (outcome,) = result.outcomes
    assert outcome.error_type == "RuntimeTampered"
    assert REDACTED in (outcome.message or "")
    assert SECRET[:6] not in (outcome.message or "")


@given(
    before=st.text("xy ", max_size=300),
    after=st.text("xy ", max_size=300),
    cap=st.integers(1, 400),
)
def test_a_cut_never_leaves_the_beginning_of_a_secret(before: str, after: str, cap: int) -> None:
    text = before + SECRET + after
    out = redact_cut(text, cap, compile_secrets([SECRET]))
    assert len(out) <= cap and out.endswith("…") == (len(text) > cap)  # a cut is shown
    assert SECRET[:4] not in out


def _only_markers(text: str) -> bool:
    """Whether nothing but redaction markers, spaces and a cut's ellipsis is left: a secret's
    first characters would be."""
    return set(text.replace(REDACTED, "").replace("…", "")) <= {" "}


async def test_a_log_line_cut_after_shorter_redacted_lines_leaves_no_secret(
    pool: RuntimePool,
) -> None:
    # The runtime cuts the last line that fits by what the lines took before redaction; the
    # first line here shrinks by 24,000 characters once redacted, which left the host room for
    # the whole cut line, secret's beginning and all.
    code = """async function onTrack(event, settings) {
      console.log(settings.apiKey.repeat(1000));
      console.log((settings.apiKey + ' ').repeat(3000))
    }"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    assert result.logs_truncated and len(result.logs) == 2
    assert all(_only_markers(line.message) for line in result.logs)


ASTRAL = "\U0001f600"  # two UTF-16 units, one character


async def test_a_log_line_of_astral_characters_cut_leaves_no_secret(pool: RuntimePool) -> None:
    # JavaScript counts UTF-16 units: 5,000 emoji took 10,000 of the margin past the cap.
    code = f"""async function onTrack(event, settings) {{
      console.log('{ASTRAL}'.repeat(5000) + (settings.apiKey + ' ').repeat(3000))
    }}"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    (line,) = result.logs
    assert result.logs_truncated and len(line.message) <= pool.config.log_cap_bytes
    assert _only_markers(line.message.replace(ASTRAL, ""))


# (A name can't be so cut: its cap is too short beside the margin.)
@pytest.mark.parametrize("where", ["message", "stack"])
async def test_an_error_text_of_astral_characters_cut_leaves_no_secret(
    pool: RuntimePool, where: str
) -> None:
    code = f"""async function onTrack(event, settings) {{
      const e = new Error('m');
      e.{where} = '{ASTRAL}'.repeat(5000) + (settings.apiKey + ' ').repeat(3000);
      throw e
    }}"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    (outcome,) = result.outcomes
    text = {"message": outcome.message, "stack": outcome.stack}[where]
    assert text is not None and _only_markers(text.replace(ASTRAL, ""))


@pytest.mark.parametrize("prefix", ["x", "é"], ids=["ascii", "two-byte"])
async def test_a_secret_across_a_traced_body_cap_is_redacted_whole(
    pool: RuntimePool, sink: Sink, prefix: str
) -> None:
    # The request and response bodies a trace keeps were cut to 8 KB before redaction; a
    # secret across the cut left its first characters in the trace, of the request body and
    # of the response (the sink's echo of it).
    code = f"""async function onTrack(event, settings) {{
      for (let k = 0; k < 40; k++) {{
        const body = '{prefix}'.repeat({TRACE_BODY_CAP} - k) + (settings.apiKey + ' ').repeat(200)
        await fetch('{sink.url}/echo', {{method: 'POST', body}})
      }}
    }}"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    assert len(result.requests) == 40
    for trace in result.requests:
        for body in (trace.request_body, trace.response_body):
            assert body is not None and len(body) <= TRACE_BODY_CAP
            assert SECRET[:3] not in body.replace("\\", "")


# Longer spelled than CUT_MARGIN (a 4096-bit PEM key through btoa is 4.3 K): never whole in a
# text cut CUT_MARGIN past its cap, so its first characters were kept (199 of a message).
LONG = "tok_" + "".join(chr(ord("A") + (i * 7) % 26) for i in range(5996))


@pytest.mark.parametrize("where", ["message", "stack", "log", "refused-url"])
async def test_a_secret_longer_than_the_margin_across_a_cap_leaves_no_beginning(
    pool: RuntimePool, where: str
) -> None:
    body = {
        "message": f"throw new Error('x'.repeat({MAX_ERROR_MESSAGE - 200}) + settings.key)",
        "stack": "const e = new Error('m'); e.stack = 'x'.repeat(16200) + settings.key; throw e",
        "log": "console.log('x'.repeat(65300) + settings.key)",
        "refused-url": f"await fetch('http://127.0.0.1/' + 'x'.repeat({MAX_URL_CHARS - 200})"
        " + settings.key).catch(() => {})",
    }[where]
    code = f"async function onTrack(event, settings) {{ {body} }}"
    result = await invoke(pool, code, settings={"key": LONG}, secrets=(LONG,))
    text = {
        "message": lambda: result.outcomes[0].message or "",
        "stack": lambda: result.outcomes[0].stack or "",
        "log": lambda: "".join(line.message for line in result.logs),
        "refused-url": lambda: "".join(t.url for t in result.requests),
    }[where]()
    assert text and LONG[:4] not in text.replace("x", "").replace("…", "")


async def test_a_previewed_value_json_cannot_write_is_kept_whole_and_redacted(
    pool: RuntimePool,
) -> None:
    # JSON.stringify throws on a BigInt: the value was written with String() and cut to the
    # message cap, with no margin, so the secret across the cut kept its first characters.
    code = """async function onTrack(event, settings) {
      return [BigInt(1), 'x'.repeat(24560) + settings.apiKey]
    }"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    assert result.values == ["1," + "x" * 24560 + REDACTED]


async def test_a_secret_as_a_header_name_is_redacted_in_the_trace(
    pool: RuntimePool, sink: Sink
) -> None:
    # A trace's header names were kept as the function gave them (fetch lowers them).
    code = f"""async function onTrack(event, settings) {{
      await fetch('{sink.url}/echo', {{method: 'POST', headers: {{[settings.apiKey]: '1'}}}});
    }}"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    (trace,) = result.requests
    assert (REDACTED, "1") in trace.request_headers
