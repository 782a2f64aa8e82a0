"""What a function returns is kept within caps: onBatch's status messages became outcome
messages whole (a message of 4 MB per event went into failure samples, spans and dead
letters), and a preview kept a returned string of any length, redacted in one piece that the
reply's redaction budget could not bound."""

from __future__ import annotations

from services.runtime import RuntimePool
from services.runtime.outcomes import MAX_ERROR_MESSAGE
from services.runtime.redact import REDACTED
from services.runtime.reply_redaction import MAX_VALUE_STRING
from tests.runtime.conftest import invoke, pool

__all__ = ["pool"]

SECRET = "sk_live_0123456789abcdefghijKLMNOP"


async def test_onbatch_status_messages_are_cut_to_the_message_cap(pool: RuntimePool) -> None:
    code = """async function onBatch(events, settings) {
      return events.map(() => ({status: 500, errormessage: 'e'.repeat(4e6) + settings.apiKey}))
    }"""
    events = [{"type": "track"}] * 3
    result = await invoke(
        pool, code, events, batch=True, settings={"apiKey": SECRET}, secrets=(SECRET,)
    )
    assert [len(o.message or "") for o in result.outcomes] == [MAX_ERROR_MESSAGE] * 3


async def test_a_status_that_is_no_number_is_quoted_short(pool: RuntimePool) -> None:
    code = "async function onBatch(events) { return [{status: 'x'.repeat(1e6)}] }"
    result = await invoke(pool, code, [{"type": "track"}], batch=True)
    (outcome,) = result.outcomes
    assert outcome.message is not None and len(outcome.message) < 200


async def test_a_returned_string_is_kept_to_its_cap_and_redacted(pool: RuntimePool) -> None:
    code = """async function onTrack(event, settings) {
      return {long: 'v'.repeat(1e6), key: settings.apiKey}
    }"""
    result = await invoke(pool, code, settings={"apiKey": SECRET}, secrets=(SECRET,))
    assert result.values is not None
    (value,) = result.values
    assert value == {"long": "v" * (MAX_VALUE_STRING - 1) + "…", "key": REDACTED}
