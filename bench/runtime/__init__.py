"""Function runtime benchmark: bare V8 call vs eventfn invocations (issue 4 targets).

Prints, in one run: a bare STPyV8 call of a trivial function; an eventfn invocation of the
same handler (one event, no fetch); the same with one fetch to a local server; per-event
costs with 100 events per crossing (single handlers and onBatch, JSON in and out, with bare
V8 JSON.parse of the same events alongside); onBatch of 400 events; and the events/s of a
handler making one fetch against the raw host HTTP request rate on the same server; then
context start and memory for a fetch-only function and the first use of each SDK (contexts.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

from services.runtime import EgressConfig, Invocation, RuntimeConfig, RuntimePool
from services.runtime.preview import sample_event

EVENT = orjson.loads(sample_event("track"))
HANDLER = "async function onTrack(event, settings) { return event.event }"
BATCH = "async function onBatch(events, settings) { return events.map(e => ({status: 200})) }"


def _events(n: int) -> bytes:
    return orjson.dumps([{**EVENT, "messageId": f"m{i}"} for i in range(n)])


def bare_v8() -> tuple[float, float]:
    """Return (µs per bare STPyV8 call, µs per event of bare JSON.parse of 100 events)."""
    from services.runtime.engine import STPyV8  # with its ICU data (v8_import.py)

    ctx = STPyV8.JSContext()
    ctx.enter()
    f = ctx.eval("(function (event, settings) { return 1 })")
    parse = ctx.eval("(function (s) { return JSON.parse(s).length })")
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        f(None, None)
    call = (time.perf_counter() - t) / n * 1e6
    events = _events(100).decode()
    m = 2_000
    t = time.perf_counter()
    for _ in range(m):
        parse(events)
    json_parse = (time.perf_counter() - t) / m / 100 * 1e6
    ctx.leave()
    return call, json_parse


async def _timed(label: str, count: int, per: int, run: Callable[[], Awaitable[object]]) -> float:
    for _ in range(max(3, count // 20)):
        await run()
    t = time.perf_counter()
    for _ in range(count):
        await run()
    us = (time.perf_counter() - t) / count / per * 1e6
    return us


async def _concurrent_rate(
    total: int, concurrency: int, run: Callable[[], Awaitable[object]]
) -> float:
    done = 0

    async def lane() -> None:
        nonlocal done
        while done < total:
            done += 1
            await run()

    t = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return total / (time.perf_counter() - t)


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.runtime.server", str(sock.fileno())],
        pass_fds=(sock.fileno(),),
        env=env,
    )
    sock.close()
    return proc, f"http://127.0.0.1:{port}/"


async def _wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("bench server did not start")


async def run_all() -> None:
    """Measure and print every figure."""
    call, json_parse = bare_v8()
    proc, url = _start_server()
    try:
        await _wait_up(url)
        config = RuntimeConfig(workers=2, egress=EgressConfig(allow=("127.0.0.1/32",)))
        async with RuntimePool(config) as pool:
            await _measure(pool, url, call, json_parse)
    finally:
        proc.kill()
        proc.wait()


async def _measure(pool: RuntimePool, url: str, call: float, json_parse: float) -> None:
    one = _events(1)
    hundred = _events(100)
    four_hundred = _events(400)
    fetch_code = (
        f"async function onTrack(event) {{ const r = await fetch('{url}'); return r.status }}"
    )

    def inv(
        key: str, code: str, events: bytes, batch: bool = False
    ) -> Callable[[], Awaitable[object]]:
        # The executor knows each pack's count (its Eventfn-Count header); so does the bench.
        count = len(orjson.loads(events))
        invocation = Invocation(key, code, events, {"apiKey": "k"}, batch, count=count)
        return lambda: pool.run(invocation)

    single = await _timed("single", 2000, 1, inv("b:single", HANDLER, one))
    single_fetch = await _timed("fetch", 500, 1, inv("b:fetch", fetch_code, one))
    per100 = await _timed("100", 300, 100, inv("b:100", HANDLER, hundred))
    batch100 = await _timed("batch100", 300, 100, inv("b:batch100", BATCH, hundred, True))
    batch400 = await _timed("batch400", 100, 400, inv("b:batch400", BATCH, four_hundred, True))

    rows = [
        ("bare STPyV8 call of a trivial function", call, 1.0),
        ("bare V8 JSON.parse, per event (100 events)", json_parse, json_parse / call),
        ("eventfn invocation, 1 event, no fetch", single, single / call),
        ("eventfn invocation, 1 event, one fetch", single_fetch, single_fetch / call),
        ("single handlers, 100 events/crossing, per event", per100, per100 / call),
        ("onBatch, 100 events/call, per event", batch100, batch100 / call),
        ("onBatch, 400 events/call, per event", batch400, batch400 / call),
    ]
    print(f"{'figure':<52}{'µs':>10}{'× bare':>10}")
    for label, us, ratio in rows:
        print(f"{label:<52}{us:>10.2f}{ratio:>10.1f}")
    print(
        f"targets: single handlers ≤ 15 µs/event -> {'met' if per100 <= 15 else 'MISSED'}; "
        f"onBatch ≤ 10 µs/event -> {'met' if batch100 <= 10 else 'MISSED'}"
    )

    # Fetch throughput: raw host HTTP rate vs handlers making one fetch each, 100 events per
    # call, one function per worker (a function's context lives in one worker). Best of 5,
    # alternating: this machine is noisy.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:

        async def raw() -> None:
            async with session.get(url) as r:
                await r.read()

        lanes = pool.config.workers
        runs = [inv(f"b:fetch100:{i}", fetch_code, hundred) for i in range(lanes)]

        async def lane(run: Callable[[], Awaitable[object]], calls: int) -> None:
            for _ in range(calls):
                await run()

        async def fetch_rate(calls: int) -> float:
            t = time.perf_counter()
            await asyncio.gather(*(lane(r, calls) for r in runs))
            return calls * lanes * 100 / (time.perf_counter() - t)

        await _concurrent_rate(500, 100, raw)
        await fetch_rate(5)
        raw_rates, fn_rates = [], []
        for _ in range(5):  # alternate, so both see the same background load
            raw_rates.append(await _concurrent_rate(5000, 100, raw))
            fn_rates.append(await fetch_rate(25))
        raw_rate, fn_rate = max(raw_rates), max(fn_rates)

    verdict = "met" if fn_rate >= raw_rate * 2 / 3 else "MISSED"
    print(f"raw host HTTP rate (aiohttp, 100 in flight):      {raw_rate:>10.0f} req/s")
    print(
        f"handlers with one fetch ({lanes} functions, 100 events/call): {fn_rate:>8.0f} events/s "
        f"= {fn_rate / raw_rate:.2f} x raw (target >= 0.67: {verdict})"
    )


def main() -> None:
    """Run the runtime benchmark."""
    import uvloop

    from bench.runtime import contexts

    uvloop.run(run_all())
    contexts.main()
