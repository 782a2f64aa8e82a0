"""Trace headers of an invocation: added to fetch and Node http requests the function makes,
never over a traceparent the function set itself."""

from __future__ import annotations

import orjson

from services.runtime import Invocation, InvocationResult, RuntimePool
from tests.runtime.conftest import Sink, new_key, value_of

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = (("traceparent", TRACEPARENT), ("tracestate", "vendor=v1"))


def code_for(sink: Sink) -> str:
    # Four requests: plain fetch, fetch with its own traceparent (any case), fetch with only a
    # tracestate of its own, and Node's https as SDKs use it.
    return f"""async function onTrack() {{
      const seen = async (headers) =>
        (await (await fetch('{sink.url}/echo', {{headers}})).json()).headers;
      const viaHttps = await new Promise((resolve, reject) => {{
        https.get('{sink.url}/echo', (res) => {{
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c) => {{ text += c }});
          res.on('end', () => resolve(JSON.parse(text).headers));
        }}).on('error', reject);
      }});
      const pick = (h) => [h.traceparent || null, h.tracestate || null];
      return [
        pick(await seen({{}})),
        pick(await seen({{'TraceParent': '00-mine'}})),
        pick(await seen({{'tracestate': 'own=1'}})),
        pick(viaHttps),
      ]
    }}"""


async def run(pool: RuntimePool, code: str, trace: tuple[tuple[str, str], ...]) -> InvocationResult:
    return await pool.run(
        Invocation(
            function_key=new_key(),
            code=code,
            events=orjson.dumps([{"type": "track"}]),
            settings={},
            batch=False,
            trace_bodies=True,
            trace_headers=trace,
        )
    )


async def test_trace_headers_go_on_requests_without_a_traceparent(
    pool: RuntimePool, sink: Sink
) -> None:
    got = value_of(await run(pool, code_for(sink), TRACE))
    assert got == [
        [TRACEPARENT, "vendor=v1"],
        ["00-mine", None],  # the function's own trace context, untouched
        [TRACEPARENT, "own=1"],
        [TRACEPARENT, "vendor=v1"],
    ]


async def test_no_trace_headers_unless_asked(pool: RuntimePool, sink: Sink) -> None:
    got = value_of(await run(pool, code_for(sink), ()))
    assert got == [[None, None], ["00-mine", None], [None, "own=1"], [None, None]]
