"""Strings holding lone surrogates (half of a UTF-16 pair, as `'😀'.slice(1)` makes, or a
`\\uD800` escape) are ordinary JavaScript strings: in Node, console.log, a fetch body and a
returned value write them as U+FFFD. Here V8's JSON.stringify escapes them in the runtime's
report and the host refused the report as "not JSON": the invocation failed as
RuntimeTampered, as if the function had attacked the runtime."""

from __future__ import annotations

import orjson

from services.runtime import RuntimePool
from tests.runtime.conftest import Sink, invoke, value_of

CODE = """
async function onTrack(event) {
  const cut = '\\uD83D\\uDE00'.slice(1)   // the low half of an emoji
  console.log('high \\uD800 low ' + cut + ' pair \\uD83D\\uDE00 text \\\\uD800')
  const r = await fetch('%s/echo', {method: 'POST', body: 'body \\uDC00'})
  return [(await r.json()).body, 'value \\uD800']
}
"""


async def test_lone_surrogates_are_written_as_replacement_characters(
    pool: RuntimePool, sink: Sink
) -> None:
    result = await invoke(pool, CODE % sink.url)
    body, value = value_of(result)  # type: ignore[misc]
    assert value == "value \ufffd"
    assert body == "body \ufffd"
    assert [line.message for line in result.logs] == [
        "high \ufffd low \ufffd pair \U0001f600 text \\uD800"
    ]
    # Everything the host keeps of it encodes (to NATS headers, PostgreSQL, logs).
    orjson.dumps([line.message for line in result.logs])
