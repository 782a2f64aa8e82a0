"""Idle calls on the router's public gRPC port. The write key is checked per message, so a
stranger needs none to open calls that never send one: IngestStreams, Ingest calls whose
request never comes, reflection streams. Each held a servicer and its tasks (20-30 KB of the
router's memory) for as long as its connection stayed open: 5,000 opened in 5 s took 145 MB,
and about 20,000 pass the router's 512 MiB limit. Now a call waits at most
EVENTFN_ROUTER_STREAM_IDLE_SECONDS for its client's next message, and at most
EVENTFN_ROUTER_GRPC_MAX_WAITING_CALLS wait at once: one more ends the longest-waiting call of a
client that sent no known write key (then of the others), with UNAVAILABLE saying to open a
new stream. A connection that never begins HTTP/2, or has no call, is closed (ServerLimits).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common import call_limits, rpc
from services.router.app import RunningRouter, start_router
from services.router.settings import RouterSettings
from tests.registry.conftest import SERVICE, Registry, make_source, registry

__all__ = ["registry"]

LIMIT = 8  # EVENTFN_ROUTER_GRPC_MAX_WAITING_CALLS (the router's default is 2,000)
IDLE = 1.0  # EVENTFN_ROUTER_STREAM_IDLE_SECONDS (the router's default is 300)
HOSTILE = 3 * LIMIT
# Calls a stranger opens and never sends a message on (bytes in, bytes out: no stubs needed).
SILENT_METHODS = (
    "/eventfn.router.v1.Router/IngestStream",
    "/eventfn.router.v1.Router/Ingest",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + SETTINGS


@dataclass
class Target:
    """A router with small limits, and a write key of one of its sources."""

    router: RunningRouter
    write_key: str

    @property
    def address(self) -> str:
        """Return the router's gRPC address."""
        return f"127.0.0.1:{self.router.grpc_port}"


@pytest.fixture
async def target(registry: Registry, nats_url: str) -> AsyncIterator[Target]:
    """Start a router with this module's limits against a registry holding one source."""
    _, owner = await registry.workspace("Hostile gRPC")
    source = await make_source(registry, owner, "web")
    settings = RouterSettings(
        router_listen="127.0.0.1:0",
        router_http_listen="127.0.0.1:0",
        nats_url=nats_url,
        registry_addr=f"127.0.0.1:{registry.port}",
        service_token=SERVICE,
        router_publish_timeout_seconds=IDLE / 2,
        router_stream_idle_seconds=IDLE,
        router_grpc_max_waiting_calls=LIMIT,
    )
    async with AsyncExitStack() as stack:
        router = await start_router(settings, stack)
        await router.watcher.wait_until(lambda v: source.write_key in v.sources_by_write_key)
        yield Target(router, source.write_key)


def batch(write_key: str, n: int) -> pb.IngestStreamRequest:
    """Return a batch of one track event."""
    events = [{"type": "track", "userId": "u", "event": "E", "messageId": f"m-{n}"}]
    return pb.IngestStreamRequest(write_key=write_key, events_json=orjson.dumps(events))


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """Return the ErrorInfo detail of a call's status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {error!r}")


async def ending(call: grpc.aio.StreamStreamCall) -> grpc.aio.AioRpcError:
    """Wait for a call that sends nothing to end; return how it ended."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    return ended.value


async def test_calls_that_send_nothing_are_ended_and_a_working_stream_is_kept(
    target: Target,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        own = grpc.aio.insecure_channel(target.address)
        stack.push_async_callback(own.close)
        working = router_pb2_grpc.RouterStub(own).IngestStream()
        await working.write(batch(target.write_key, 0))
        assert (await working.read()).accepted == 1

        # A stranger's calls over connections of its own, none sending a message.
        channels = [
            grpc.aio.insecure_channel(
                target.address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(4)
        ]
        for channel in channels:
            stack.push_async_callback(channel.close)
        hostile = [channels[n % 4].stream_stream(SILENT_METHODS[n % 3])() for n in range(HOSTILE)]
        endings = asyncio.gather(*(ending(call) for call in hostile))

        # The working stream sends a batch now and then, an Ingest call comes too: all are
        # answered, and none is ended, until every hostile call is.
        sent = 1
        deadline = time.monotonic() + IDLE + 5
        while not endings.done():
            assert time.monotonic() < deadline, "the hostile calls are held"
            await working.write(batch(target.write_key, sent))
            answer = await working.read()
            assert answer.accepted == 1 and answer.sequence == sent, answer
            sent += 1
            one = await router_pb2_grpc.RouterStub(own).Ingest(
                pb.IngestRequest(
                    write_key=target.write_key, events_json=batch(target.write_key, 0).events_json
                )
            )
            assert one.accepted == 1
            await asyncio.wait([endings], timeout=IDLE / 4)
        ended = await endings

        assert {e.code() for e in ended} == {grpc.StatusCode.UNAVAILABLE}
        crowded = [e for e in ended if "max_waiting_calls" in error_info(e).metadata]
        idled = [e for e in ended if "idle_seconds" in error_info(e).metadata]
        assert len(crowded) + len(idled) == HOSTILE
        # The working stream holds one place: strangers kept at most the others, until idle.
        assert len(idled) <= LIMIT - 1, (len(crowded), len(idled))
        assert "open a new call (stream)" in (ended[0].details() or "")
        await working.write(batch(target.write_key, sent))
        assert (await working.read()).sequence == sent
        await working.done_writing()
        assert await working.code() is grpc.StatusCode.OK


async def test_an_idle_stream_is_ended_with_a_status_saying_to_reopen_it(
    target: Target,
) -> None:
    async with grpc.aio.insecure_channel(target.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        stream = stub.IngestStream()
        await stream.write(batch(target.write_key, 0))
        assert (await stream.read()).accepted == 1
        answered = time.monotonic()
        error = await asyncio.wait_for(ending(stream), IDLE + 5)
        waited = time.monotonic() - answered
        assert IDLE * 0.9 <= waited < IDLE + 2, waited
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        details = error.details() or ""
        assert f"waits {IDLE:g} s for the client's next message" in details
        assert "open a new call (stream)" in details
        assert error_info(error).metadata["idle_seconds"] == f"{IDLE:g}"
        # The next stream, on the same channel, works.
        again = stub.IngestStream()
        await again.write(batch(target.write_key, 1))
        assert (await again.read()).accepted == 1
        await again.done_writing()
        assert await again.code() is grpc.StatusCode.OK


async def until_closed(reader: asyncio.StreamReader) -> float:
    """Read until the server closes the connection; return when it did (monotonic)."""
    with contextlib.suppress(ConnectionResetError):
        while await reader.read(4096):
            pass
    return time.monotonic()


async def test_connections_that_begin_no_http2_or_no_call_are_closed() -> None:
    """Every service's server: the router's port closes them after 10 s and 300 s."""
    limits = call_limits.ServerLimits(connection_idle_seconds=IDLE, handshake_seconds=IDLE / 2)
    server, port, health = rpc.create_server(
        address="127.0.0.1:0", register=[], service_names=[], limits=limits
    )
    await server.start()
    await rpc.set_serving(health, [])
    try:
        opened = time.monotonic()
        silent = await asyncio.open_connection("127.0.0.1", port)
        preface = await asyncio.open_connection("127.0.0.1", port)
        preface[1].write(PREFACE)
        closed = await asyncio.wait_for(
            asyncio.gather(until_closed(silent[0]), until_closed(preface[0])), IDLE + 5
        )
        assert closed[0] - opened >= IDLE / 2 * 0.9, "closed when its handshake time passed"
        assert closed[1] - opened >= IDLE * 0.9, "closed when its idle time passed"
        for _, writer in (silent, preface):
            writer.close()

        # A client's idle connection is closed too, and its next call simply reconnects.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            await check(b"")
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            await asyncio.wait_for(
                channel.wait_for_state_change(grpc.ChannelConnectivity.READY), IDLE + 5
            )
            await check(b"")
    finally:
        await server.stop(None)
