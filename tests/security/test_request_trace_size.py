"""How much an invocation's request traces may hold. Each of up to 10,000 fetches left a trace
of its whole URL (up to 64 KB) and an error quoting it again, all shipped to the executor: 1,000
refused fetches of 64 KB URLs made 125 MB of traces, and the executor grew from 59 MB to 435 MB
for one invocation, delivered and charged to no one. A trace's URL keeps 2,048 characters now,
its error as much around the URL it quotes, and only the last 100 traces keep bodies and
headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from services.runtime import RuntimePool
from services.runtime.report import DETAILED_TRACES, TRACE_TEXT_CHARS
from tests.runtime.conftest import invoke
from tests.security.conftest import Recorder, config


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[RuntimePool]:
    async with RuntimePool(config(workers=1, allow=("127.0.0.1/32",))) as pool:
        yield pool


async def test_traces_of_many_long_requests_are_cut(pool: RuntimePool, recorder: Recorder) -> None:
    code = f"""async function onTrack() {{
      const long = '?' + 'a'.repeat(60000);
      const refused = () => fetch('http://10.0.0.1/' + long).catch(() => 0);
      await Promise.all(Array.from({{length: 150}}, refused));
      const served = '{recorder.url}/ok?' + 'b'.repeat(6000);  // the server's line limit: 8 KB
      await Promise.all(Array.from({{length: 150}}, () => fetch(served)));
    }}"""
    result = await invoke(pool, code, timeout_s=20)
    assert result.outcomes[0].error_type is None, result.outcomes[0]
    traces = result.requests
    assert len(traces) == 300
    assert max(len(t.url) for t in traces) <= TRACE_TEXT_CHARS
    assert max(len(t.error or "") for t in traces) <= 3 * TRACE_TEXT_CHARS  # around the URL
    assert all(t.url in t.error and "reason" in t.error for t in traces[:150])
    assert all(t.error for t in traces[:150])
    older, last = traces[150:-DETAILED_TRACES], traces[-DETAILED_TRACES:]
    assert all(t.response_body is None and not t.response_headers for t in older)
    assert all(t.response_body and t.response_headers for t in last)
