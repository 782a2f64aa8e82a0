"""A function that returns what the worker cannot send back. orjson writes at most 254
levels, so an onBatch returning an array nested 300 deep (what onBatch returns always goes
back to the executor) made encoding the worker's reply raise outside the guarded invocation:
no reply, the pool waited for ever, and the executor held the instance's slots and packs
(four such instances stopped an executor for every tenant). Values are now kept to
MAX_VALUE_DEPTH levels, a reply that still cannot be encoded is answered as a failure, and a
worker that leaves an invocation unanswered well past its deadline is replaced. (Any
destination could do the same: a redirect's Location in bytes that are not UTF-8 made the
worker's results unencodable.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from services.runtime import OutcomeKind, RuntimePool
from services.runtime.report import TOO_DEEP
from services.runtime.worker_handle import WorkerHandle
from tests.runtime.conftest import invoke, value_of
from tests.security.conftest import Recorder, config, recorder

__all__ = ["recorder"]


@contextlib.contextmanager
def _stopped(worker: WorkerHandle) -> Iterator[None]:
    """Stop a worker process (SIGSTOP) for the block, and let it go on after if it lives."""
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        # Killed meanwhile, it may be reaped before its return code is read.
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signal.SIGCONT)


DEEP = "let v = 'x'; for (let i = 0; i < 300; i++) v = [v];"


async def test_an_onbatch_value_nested_too_deep_is_answered_as_an_invalid_result() -> None:
    code = f"async function onBatch(events) {{ {DEEP} return v }}"
    async with RuntimePool(config(workers=1)) as pool:
        result = await asyncio.wait_for(
            invoke(pool, code, [{"type": "track"}], batch=True, timeout_s=1), 5
        )
    (outcome,) = result.outcomes
    assert (outcome.kind, outcome.error_type) == (OutcomeKind.FAILURE, "InvalidBatchResult")


async def test_a_returned_value_nested_too_deep_is_kept_to_its_depth() -> None:
    # A preview shows what handlers return: kept, cut where it is too deep.
    code = f"async function onTrack() {{ {DEEP} return v }}"
    async with RuntimePool(config(workers=1)) as pool:
        result = await asyncio.wait_for(invoke(pool, code, timeout_s=1), 5)
    value = value_of(result)
    depth = 0
    while isinstance(value, list):
        (value,) = value
        depth += 1
    assert (depth, value) == (64, TOO_DEEP)


@pytest.mark.timeout(60)
async def test_a_worker_that_stops_answering_is_replaced(recorder: Recorder) -> None:
    # A worker frozen outside V8 (here stopped while its function awaits a fetch) never
    # answers: its invocation ends as a Timeout once well past its deadline.
    code = f"""async function onTrack() {{
      await fetch('{recorder.url}/hold?s=8&frozen')
    }}"""
    async with RuntimePool(config(workers=1, allow=("127.0.0.1/32",))) as pool:
        (worker,) = [w for w in pool._workers if w is not None]
        recorder.arrived.clear()
        running = asyncio.ensure_future(invoke(pool, code, timeout_s=1))
        while "/hold?s=8&frozen" not in recorder.paths():
            await recorder.arrived.wait()
            recorder.arrived.clear()
        with _stopped(worker):
            result = await asyncio.wait_for(running, 15)
        (outcome,) = result.outcomes
        assert outcome.error_type == "Timeout"
        assert worker.dead


@pytest.mark.timeout(60)
async def test_a_late_invocation_of_a_worker_held_up_outside_v8_is_not_blamed(
    recorder: Recorder,
) -> None:
    # Outside V8 the worker's own host work for one invocation (a costly redaction, say) holds
    # up every other: the one found late was quarantined as if it had frozen the worker.
    code = f"""async function onTrack() {{
      await fetch('{recorder.url}/hold?s=8&held-up=' + Math.random())
    }}"""
    async with RuntimePool(config(workers=1, allow=("127.0.0.1/32",))) as pool:
        (worker,) = [w for w in pool._workers if w is not None]
        recorder.arrived.clear()
        late = asyncio.ensure_future(invoke(pool, code, timeout_s=1, key="late:1"))
        other = asyncio.ensure_future(invoke(pool, code, timeout_s=30, key="other:1"))
        while sum("held-up=" in p for p in recorder.paths()) < 2:
            await recorder.arrived.wait()
            recorder.arrived.clear()
        with _stopped(worker):
            result = await asyncio.wait_for(late, 15)
        (outcome,) = result.outcomes
        assert outcome.error_type == "Timeout" and worker.dead
        assert not pool._quarantined("late:1"), "the late invocation's function was blamed"
        await asyncio.wait_for(other, 15)
        assert not pool._quarantined("other:1")


async def _redirect_not_utf8(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 302 Found\r\nLocation: ftp://elsewhere.example/\xff\xfe\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    writer.close()


async def test_a_redirect_location_that_is_not_utf8_is_read_as_node_reads_it() -> None:
    # Any destination can answer this; its bytes made the worker's results unencodable: the
    # event failed as RuntimeInternalError with a traceback in the executor's log, each time.
    server = await asyncio.start_server(_redirect_not_utf8, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = f"""async function onTrack() {{
      try {{ await fetch('http://127.0.0.1:{port}/') }} catch (e) {{ return e.message }}
    }}"""
    try:
        async with RuntimePool(config(workers=1, allow=("127.0.0.1/32",))) as pool:
            result = await invoke(pool, code)
    finally:
        server.close()
    assert value_of(result) == "redirect to ftp://elsewhere.example/ÿþ is not http(s)"
